"""The counter bot on pyTelegramBotAPI's AsyncTeleBot: /count counts the commands of each chat.

Needs pyTelegramBotAPI (pip install -e '.[telebot]' in the checkout) and BOT_TOKEN.
TELEGRAM_API_URL points it at another Bot API server, such as a self-hosted one. Sessions
are kept under the app name "telebot_async_counter", apart from the other examples'.
"""

import asyncio
import os
import sys

from telebot import asyncio_helper
from telebot.async_telebot import AsyncTeleBot
from telebot.types import Message

from simplesession import FileStorage
from simplesession.contrib.telebot import AsyncSessionMiddleware

if "BOT_TOKEN" not in os.environ:
    sys.exit("set BOT_TOKEN to your bot's token (from @BotFather)")
if "TELEGRAM_API_URL" in os.environ:
    asyncio_helper.API_URL = os.environ["TELEGRAM_API_URL"].rstrip("/") + "/bot{0}/{1}"

bot = AsyncTeleBot(os.environ["BOT_TOKEN"])  # AsyncTeleBot needs no use_class_middlewares
storage = FileStorage(app_name="telebot_async_counter")
bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=storage))


@bot.message_handler(commands=["count"])
async def count(message: Message, session: dict[str, int]) -> None:
    session["count"] += 1
    await bot.send_message(message.chat.id, f"You have sent {session['count']} commands")


if __name__ == "__main__":
    asyncio.run(bot.infinity_polling())
