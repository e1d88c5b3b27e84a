"""The TON boundary: a toncenter v2 client, the deposit watcher, wallet transfers and payouts."""
