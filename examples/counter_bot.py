"""The counter bot: /count counts the commands of each chat.

Without BOT_TOKEN it talks on the console: type /count and press Enter (Ctrl-D quits).
Sessions are kept in the folder of the app "counter_bot" (on Linux
~/.local/share/counter_bot/sessions), so the count survives a restart, and no other bot's
sessions mix with them: `simplesession --app counter_bot ls` lists them.
"""

import os

from simplesession import Bot, Context, FileStorage, session

bot = Bot(os.environ.get("BOT_TOKEN"))
bot.use(session(initial=lambda: {"count": 0}, storage=FileStorage(app_name="counter_bot")))


@bot.command("count")
def count(ctx: Context) -> None:
    ctx.session["count"] += 1
    ctx.reply(f"You have sent {ctx.session['count']} commands")


if __name__ == "__main__":
    bot.start()
