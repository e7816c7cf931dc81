"""The counter bot on aiogram 3: /count counts the commands of each chat, /reset forgets them.

Needs aiogram (pip install -e '.[aiogram]' in the checkout) and BOT_TOKEN.
TELEGRAM_API_URL points it at another Bot API server, such as a self-hosted one.
Sessions are kept under the app name "aiogram_counter", apart from the other examples'.
"""

import asyncio
import os
import sys

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.filters import Command
from aiogram.types import Message

from simplesession import FileStorage
from simplesession.contrib.aiogram import AiogramContext, SessionMiddleware

dp = Dispatcher()
dp.update.outer_middleware(
    SessionMiddleware(initial=lambda: {"count": 0}, storage=FileStorage(app_name="aiogram_counter"))
)


@dp.message(Command("count"))
async def count(message: Message, session: dict[str, int]) -> None:
    session["count"] += 1
    await message.answer(f"You have sent {session['count']} commands")


@dp.message(Command("reset"))
async def reset(message: Message, session_context: AiogramContext) -> None:
    session_context.session = None  # deletes the session; a value would replace it
    await message.answer("Forgotten")


async def main() -> None:
    if "BOT_TOKEN" not in os.environ:
        sys.exit("set BOT_TOKEN to your bot's token (from @BotFather)")
    server = os.environ.get("TELEGRAM_API_URL")
    session = AiohttpSession(api=TelegramAPIServer.from_base(server)) if server else None
    await dp.start_polling(Bot(os.environ["BOT_TOKEN"], session=session))


if __name__ == "__main__":
    asyncio.run(main())
