"""What the bot says. English; another language is one more dict (`TEXTS[lang]`)."""

from __future__ import annotations

COMMANDS: dict[str, dict[str, str]] = {
    "en": {
        "start": "Welcome and your free trial",
        "new": "Start a new conversation",
        "model": "Choose a model",
        "balance": "Your balance",
        "topup": "Add funds with Telegram Stars",
        "usage": "Your recent requests",
        "verify": "Which enclave answered your last message",
        "privacy": "Who can read what",
        "settings": "Your settings",
        "help": "How to use this bot",
        "paysupport": "Help with a payment",
    }
}

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "welcome": (
            "Hi! I answer with open models that run on Cocoon, a network of GPUs inside "
            "confidential virtual machines. Just write to me.\n\n"
            "Each answer is paid per token from your balance (/balance, /topup). "
            "/privacy says who can read what."
        ),
        "trial": "A free trial of {amount} was added to your balance.",
        "help": (
            "Write a message and I answer; I remember this conversation until /new.\n"
            "/model chooses the model, /balance and /topup manage funds, /usage lists your "
            "recent requests, /verify shows which enclave answered, /privacy explains who can "
            "read what. In groups, mention me or reply to me."
        ),
        "privacy": (
            "Who can read your messages:\n"
            "• Telegram and this bot: they carry your message, so they see it.\n"
            "• The model runs in a confidential VM (Intel TDX) whose code is verified before "
            "it gets any prompt; the GPU owner's computer cannot read inside it.\n"
            "{transport}\n"
            "• This bot keeps your conversation in memory only, never on disk or on the bus; "
            "/new forgets it, and a restart forgets everything.\n"
            "• Billing sees only counts: tokens and what they cost."
        ),
        "new": "Started a new conversation.",
        "no_models": "No model is available right now. Please try again in a minute.",
        "choose_model": "Choose a model (price per 1,000 tokens):",
        "model_set": "Model set to {model}.",
        "balance": "Balance: {available} available, {held} held for answers in progress.",
        "balance_unknown": "No balance yet: /topup adds funds.",
        "topup": "Choose an amount. Stars become balance at {rate} per Star.",
        "invoice_title": "{stars} Stars of Cocoon balance",
        "invoice_description": "Adds {amount} to your balance for answers from Cocoon's models.",
        "credited": "Payment received: {amount} will be on your balance in a moment.",
        "usage_empty": "No requests yet.",
        "usage_header": "Your recent requests:",
        "privacy_client_sealed": (
            "• This bot checks that VM's evidence itself and encrypts your prompt to it; the "
            "network's servers and message bus carry it and the answer only encrypted "
            "(/verify shows which VM answered)."
        ),
        "privacy_gateway_sealed": (
            "• The network's gateway encrypts your prompt to that VM, so the network's "
            "operator could read it there; its message bus carries it only encrypted."
        ),
        "verify_none": "Nothing to verify yet: send me a message first.",
        "verify": (
            "Your last answer: request {request_id}, model {model}, {prompt} prompt + "
            "{completion} answer tokens.\nPath: {path}."
        ),
        "path_client": (
            "sealed by this bot for the enclave below, after checking its TDX quote and the "
            "registry itself; the operator's gateway relayed only ciphertext"
        ),
        "path_gateway": (
            "sealed by the gateway for an attested enclave (the gateway read it; this bot "
            "runs without client-side sealing)"
        ),
        "verify_enclave": (
            "Enclave: worker {worker}\nTDX TCB status: {tcb} (advisories: {advisories})\n"
            "Image hash: {image}\nQuote signed under: {root}\nFMSPC: {fmspc}"
        ),
        "verify_receipt": (
            "The worker's usage receipt, signed with the key its quote attests (check it with "
            "`cocoon client audit`):"
        ),
        "settings": "Model: {model}\nConversation memory: up to {budget} tokens.",
        "paysupport": (
            "For a problem with a payment, write to {contact} with the date and the amount."
        ),
        "paysupport_refunds": (
            "A Stars payment can be refunded while your balance still holds what it added: "
            "press Refund under its confirmation."
        ),
        "paysupport_no": "Refunds are decided by the operator.",
        "refund_button": "Refund this payment",
        "refunds_off": "Refunds are not offered by this bot; see /paysupport.",
        "refund_asked": "Refund asked: you will get a message when it is done.",
        "refunded": "Refunded: {stars} Stars are back with you; {amount} left your balance.",
        "refund_refused": "This payment cannot be refunded: {reason}.",
        "refund_failed": (
            "Telegram did not accept the refund; {amount} is back on your balance. See /paysupport."
        ),
        "too_long": "Your message is too long ({length} characters; at most {limit}).",
        "rate_limited": "Too many messages: please wait {seconds} seconds.",
        "daily_cap": "You reached today's limit of {tokens} tokens. It resets at midnight UTC.",
        "busy": "I am still answering your previous message: press Stop or wait.",
        "insufficient": "Your balance is too low for this answer: /topup adds funds.",
        "all_busy": "All models are busy right now. Please try again in a minute.",
        "failed": "Sorry, the answer failed ({code}). Please try again.",
    }
}


def say(key: str, lang: str | None = None, **values: object) -> str:
    table = TEXTS.get(lang or "en") or TEXTS["en"]
    return (table.get(key) or TEXTS["en"][key]).format(**values)


def ton(nanoton: int) -> str:
    """nanoTON as TON with up to 9 decimals, trailing zeros trimmed."""
    whole, frac = divmod(nanoton, 1_000_000_000)
    digits = f"{frac:09d}".rstrip("0")
    return f"{whole}.{digits} TON" if digits else f"{whole} TON"
