"""Multi sessions: user data and chat data side by side, each with its own key.

/name NAME   remember your name (user session: follows you into every chat)
/mute        toggle muting for this chat (chat session: shared by its members)
/me          show both

Both fragments are kept under the app name "multi_sessions", apart from the other examples'.
"""

import os

from simplesession import Bot, Context, FileStorage, multi_session

storage = FileStorage(app_name="multi_sessions")
bot = Bot(os.environ.get("BOT_TOKEN"))
bot.use(
    multi_session(
        user={
            "initial": lambda: {"username": "", "language": "en"},
            "get_session_key": lambda ctx: None if ctx.from_id is None else str(ctx.from_id),
            "storage": storage,
        },
        chat={"initial": lambda: {"settings": {"muted": False}}, "storage": storage},
    )
)


@bot.command("name")
def name(ctx: Context) -> None:
    ctx.session.user["username"] = (ctx.text or "").partition(" ")[2].strip()
    ctx.reply(f"Hello, {ctx.session.user['username'] or 'stranger'}")


@bot.command("mute")
def mute(ctx: Context) -> None:
    settings = ctx.session.chat["settings"]
    settings["muted"] = not settings["muted"]
    ctx.reply("muted" if settings["muted"] else "unmuted")


@bot.command("me")
def me(ctx: Context) -> None:
    user, chat = ctx.session.user, ctx.session.chat
    ctx.reply(f"name={user['username']!r} language={user['language']} muted={chat['settings']['muted']}")


if __name__ == "__main__":
    bot.start()
