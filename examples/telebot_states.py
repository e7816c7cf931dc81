"""A conversation with pyTelegramBotAPI's states, kept by simplesession: /start asks a name,
then an age, then sums up. Stop the bot halfway and start it again: it goes on where it was.

Needs pyTelegramBotAPI (pip install -e '.[telebot]' in the checkout) and BOT_TOKEN.
TELEGRAM_API_URL points it at another Bot API server, such as a self-hosted one. States are
kept under the app name "telebot_states", apart from the other examples'.
"""

import os
import sys

from telebot import TeleBot, apihelper, custom_filters
from telebot.states import State, StatesGroup
from telebot.types import Message

from simplesession import FileStorage
from simplesession.contrib.telebot import StateStorage

if "BOT_TOKEN" not in os.environ:
    sys.exit("set BOT_TOKEN to your bot's token (from @BotFather)")
if "TELEGRAM_API_URL" in os.environ:
    apihelper.API_URL = os.environ["TELEGRAM_API_URL"].rstrip("/") + "/bot{0}/{1}"  # type: ignore[assignment]

states = StateStorage(FileStorage(app_name="telebot_states"))
bot = TeleBot(os.environ["BOT_TOKEN"], state_storage=states)
bot.add_custom_filter(custom_filters.StateFilter(bot))


class Form(StatesGroup):
    name = State()
    age = State()


def sender(message: Message) -> int:
    return message.from_user.id if message.from_user else message.chat.id


@bot.message_handler(commands=["start"])
def start(message: Message) -> None:
    bot.set_state(sender(message), Form.name, message.chat.id)
    bot.send_message(message.chat.id, "What is your name?")


@bot.message_handler(state=Form.name)
def name(message: Message) -> None:
    bot.add_data(sender(message), message.chat.id, name=message.text)
    bot.set_state(sender(message), Form.age, message.chat.id)
    bot.send_message(message.chat.id, "How old are you?")


@bot.message_handler(state=Form.age)
def age(message: Message) -> None:
    if not (message.text or "").isdigit():
        bot.send_message(message.chat.id, "A number, please")
        return
    with bot.retrieve_data(sender(message), message.chat.id) as data:  # type: ignore[union-attr]  # telebot says dict
        data["age"] = int(message.text or "0")
        summary = f"{data['name']}, {data['age']}"
    bot.delete_state(sender(message), message.chat.id)
    bot.send_message(message.chat.id, f"Thanks: {summary}")


if __name__ == "__main__":
    bot.infinity_polling()
