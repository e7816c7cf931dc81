"""The counter bot on Redis: for bots that run on several machines, or several processes.

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/redis_counter.py

Without BOT_TOKEN it talks on the console. Every process that uses the same Redis server
(and prefix) shares the sessions, and the per-chat locks hold across all of them.
"""

import os

from simplesession import Bot, Context, RedisStorage, session

storage = RedisStorage(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), prefix="counter:")

bot = Bot(os.environ.get("BOT_TOKEN"))
bot.use(session(initial=lambda: {"count": 0}, storage=storage))


@bot.command("count")
def count(ctx: Context) -> None:
    ctx.session["count"] += 1
    ctx.reply(f"You have sent {ctx.session['count']} commands")


if __name__ == "__main__":
    bot.start()
