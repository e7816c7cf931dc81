"""The counter bot on pyTelegramBotAPI: /count counts the commands of each chat.

Needs pyTelegramBotAPI (pip install -e '.[telebot]' in the checkout) and BOT_TOKEN.
TELEGRAM_API_URL points it at another Bot API server, such as a self-hosted one.
Sessions are kept under the app name "telebot_counter", apart from the other examples'.
"""

import os
import sys

from telebot import TeleBot, apihelper
from telebot.types import Message

from simplesession import FileStorage
from simplesession.contrib.telebot import SessionMiddleware

if "BOT_TOKEN" not in os.environ:
    sys.exit("set BOT_TOKEN to your bot's token (from @BotFather)")
if "TELEGRAM_API_URL" in os.environ:
    apihelper.API_URL = os.environ["TELEGRAM_API_URL"].rstrip("/") + "/bot{0}/{1}"  # type: ignore[assignment]

bot = TeleBot(os.environ["BOT_TOKEN"], use_class_middlewares=True)
bot.setup_middleware(SessionMiddleware(initial=lambda: {"count": 0}, storage=FileStorage(app_name="telebot_counter")))


@bot.message_handler(commands=["count"])
def count(message: Message, session: dict[str, int]) -> None:
    session["count"] += 1
    bot.send_message(message.chat.id, f"You have sent {session['count']} commands")


if __name__ == "__main__":
    bot.infinity_polling()
