"""Cocoon on Telegram: a bot that is a client of the network like any application."""
