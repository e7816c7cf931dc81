"""The counter bot: /count counts the commands of each chat.

Without BOT_TOKEN it talks on the console: type /count and press Enter (Ctrl-D quits).
Sessions are kept in the default FileStorage folder, so the count survives a restart.
"""

import os

from simplesession import Bot, Context, session

bot = Bot(os.environ.get("BOT_TOKEN"))
bot.use(session(initial=lambda: {"count": 0}))


@bot.command("count")
def count(ctx: Context) -> None:
    ctx.session["count"] += 1
    ctx.reply(f"You have sent {ctx.session['count']} commands")


if __name__ == "__main__":
    bot.start()
