"""Custom session keys: one session per user (across chats), or per user in each chat.

python examples/session_keys.py user     # default: per user
python examples/session_keys.py member   # per user in each chat

Both modes keep their sessions under the app name "session_keys", apart by prefix.
"""

import os
import sys

from simplesession import Bot, Context, FileStorage, session


def per_user(ctx: Context) -> str | None:
    return None if ctx.from_id is None else str(ctx.from_id)


def per_member(ctx: Context) -> str | None:
    if ctx.from_id is None or ctx.chat_id is None:
        return None  # e.g. an inline query: no session for it
    return f"{ctx.chat_id}/{ctx.from_id}"


KEYS = {"user": per_user, "member": per_member}
mode = sys.argv[1] if len(sys.argv) > 1 else "user"

bot = Bot(os.environ.get("BOT_TOKEN"))
storage = FileStorage(app_name="session_keys")
bot.use(session(initial=lambda: {"count": 0}, storage=storage, get_session_key=KEYS[mode], prefix=f"{mode}:"))


@bot.command("count")
def count(ctx: Context) -> None:
    ctx.session["count"] += 1
    ctx.reply(f"{ctx.session['count']} (session {ctx.session_key})")


if __name__ == "__main__":
    bot.start()
