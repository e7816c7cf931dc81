"""The counter bot on python-telegram-bot: /count counts the commands of each chat in its chat_data.

Needs python-telegram-bot (pip install -e '.[ptb]' in the checkout) and BOT_TOKEN: PTB has
no console to talk on, so unlike the other examples this one runs only against a Bot API
server. TELEGRAM_API_URL points it at another one, such as a self-hosted one.
Each chat's chat_data is a session of its own ("ptb:chat:<chat id>"), kept under the app
name "ptb_counter", apart from the other examples'; /forget deletes it.
"""

import os
import sys

from telegram import Update
from telegram.ext import ApplicationBuilder, CommandHandler, ContextTypes

from simplesession import FileStorage
from simplesession.contrib.ptb import SessionPersistence

if "BOT_TOKEN" not in os.environ:
    sys.exit("set BOT_TOKEN to your bot's token (from @BotFather)")
builder = ApplicationBuilder().token(os.environ["BOT_TOKEN"])
if "TELEGRAM_API_URL" in os.environ:
    builder = builder.base_url(os.environ["TELEGRAM_API_URL"].rstrip("/") + "/bot")
app = builder.persistence(SessionPersistence(FileStorage(app_name="ptb_counter"))).build()


async def count(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert context.chat_data is not None
    assert update.effective_message is not None
    context.chat_data["count"] = context.chat_data.get("count", 0) + 1
    await update.effective_message.reply_text(f"You have sent {context.chat_data['count']} commands")


async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_chat is not None
    assert update.effective_message is not None
    context.application.drop_chat_data(update.effective_chat.id)
    await update.effective_message.reply_text("Forgotten")


app.add_handler(CommandHandler("count", count))
app.add_handler(CommandHandler("forget", forget))

if __name__ == "__main__":
    app.run_polling()
