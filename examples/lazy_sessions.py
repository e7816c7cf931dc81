"""Lazy sessions: the session is read only by handlers that touch ctx.session.

/count reads and writes the session; any other text is echoed without reading it, so
those updates do no disk I/O and take no lock. Sessions are kept under the app name
"lazy_sessions", apart from the other examples'.
"""

import os

from simplesession import Bot, Context, FileStorage, lazy_session

bot = Bot(os.environ.get("BOT_TOKEN"))
bot.use(lazy_session(initial=lambda: {"count": 0}, storage=FileStorage(app_name="lazy_sessions")))


@bot.command("count")
def count(ctx: Context) -> None:
    ctx.session["count"] += 1
    ctx.reply(f"You have sent {ctx.session['count']} commands")


@bot.on("message:text")
def echo(ctx: Context) -> None:
    ctx.reply(f"echo: {ctx.text}")


if __name__ == "__main__":
    bot.start()
