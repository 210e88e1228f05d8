#!/usr/bin/env python
"""Build ftsweep's embedded default assets: two small datasets and a tiny causal LM.

Why this exists
---------------
ftsweep has to run end to end (search -> fine-tune -> evaluate) with no network
access and no GPU: in CI, in the tests, and on a laptop for a first try. So the
repository ships its own defaults instead of pointing at the Hugging Face hub:

* ``datasets/support_qa.jsonl``       ``{"prompt", "response"}`` customer-service QA
* ``datasets/support_intents.jsonl``  ``{"text", "label"}`` intent classification
* ``datasets/support_intents_groups.jsonl``  ``{"text", "label", "customer_group"}`` the same task with
                                       a group column (app, email, phone) for fairness metrics
* ``models/tiny-support-lm/``         a ~0.2M-parameter Llama pretrained here
* ``models/tiny-support-gpt2/``       a GPT-2 of about the same size with its own, different
                                       tokenizer: the second model of base-model sweeps

Everything is produced by this one script from a seed, so the shipped files can
be audited and rebuilt: the datasets bit for bit anywhere (pure Python
`random`), the checkpoint bit for bit given the same torch/transformers build
and thread count (float summation order is the only source of drift).

The model is pretrained on *domain text* (policy pages, product blurbs, loose
customer questions, loose agent replies) but never on question/answer *pairs*
in the fine-tuning format. A fine-tuning run on ``support_qa.jsonl`` therefore
has something real to learn (the pairing, the format, copying slot values) and
hyperparameters actually change the outcome, which is what a sweep needs.

Usage::

    python scripts/build_demo_assets.py [--out objectives/assets] [--seed 0]
                                        [--pretrain-steps N] [--only data|groups|routing|model|gpt2|all]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

# The whole point of these assets is to work offline; never let a stray
# from_pretrained call try to reach the hub while we build.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "objectives" / "assets"

QA_FILE = "datasets/support_qa.jsonl"
INTENTS_FILE = "datasets/support_intents.jsonl"
GROUPS_FILE = "datasets/support_intents_groups.jsonl"
ROUTING_FILE = "datasets/support_routing.jsonl"
MODEL_DIR = "models/tiny-support-lm"
GPT2_DIR = "models/tiny-support-gpt2"

DEFAULT_SEED = 0
N_QA = 1200
N_INTENTS = 1200
N_GROUPS = 1200
# Default step count is sized so the full build stays well under two minutes on
# two CPU cores (see README for the measured wall time).
DEFAULT_PRETRAIN_STEPS = 1200

# The fine-tuning format the rest of ftsweep is expected to use. The tokenizer
# prepends <s> on its own (Llama convention), and "</s>" written in the text is
# matched as the EOS special token, so the model learns where an answer stops.
# The prompt ends at "Answer:" WITHOUT the trailing space: byte-level BPE glues
# a space to the following word ("Ġorder"), so only then are the prompt's
# tokens an exact prefix of the full example's tokens (needed to mask the
# prompt out of the loss, and to generate from the prompt alone).
PROMPT_TEMPLATE = "Question: {prompt}\nAnswer:"
EXAMPLE_TEMPLATE = PROMPT_TEMPLATE + " {response}</s>"
MAX_EXAMPLE_TOKENS = 64

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]  # ids 0..3, in this order
VOCAB_SIZE = 1536
# The GPT-2 model's tokenizer differs on purpose: another vocabulary size, GPT-2's single
# <|endoftext|> special token, no <s> prefix. A sweep over both models must tokenize the data twice.
GPT2_VOCAB_SIZE = 1024
GPT2_EOT = "<|endoftext|>"
GPT2_PRETRAIN_STEPS = 600


# ---------------------------------------------------------------------------
# 1. The fictional shop and its slot values
# ---------------------------------------------------------------------------

SHOP = "Brightleaf"

CLOTHING = [
    "rain jacket", "wool sweater", "denim jeans", "linen shirt", "winter coat",
    "cotton hoodie", "running shorts", "summer dress", "hiking boots", "knit cardigan",
]
ELECTRONICS = [
    "coffee grinder", "desk lamp", "wireless headphones", "table fan", "phone charger",
    "kitchen scale", "electric kettle", "bluetooth speaker", "hair dryer", "smart watch",
]
HOMEWARE = [
    "ceramic mug", "water bottle", "yoga mat", "backpack", "travel pillow",
    "bike helmet", "cutting board", "scented candle", "bath towel", "plant pot",
]
PRODUCTS = CLOTHING + ELECTRONICS + HOMEWARE
CITIES = [
    "Lyon", "Porto", "Leeds", "Ghent", "Turin", "Bremen", "Malmo", "Cork",
    "Graz", "Utrecht", "Bilbao", "Krakow", "Aarhus", "Bergen", "Basel", "Nantes",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SIZES = ["XS", "S", "M", "L", "XL"]
PAYMENT_METHODS = ["Visa card", "Mastercard", "PayPal account", "debit card", "Amex card"]
PLANS = ["Basic", "Plus", "Premium", "Family"]
PROMO_WORDS = ["SAVE", "WELCOME", "SPRING", "SUMMER", "AUTUMN", "WINTER", "HELLO", "FRIENDS"]
PROMO_PERCENTS = [5, 10, 15, 20, 25, 30]
NAMES = [
    "anna", "ben", "chloe", "david", "emma", "felix", "grace", "hugo",
    "iris", "jonas", "kate", "leo", "maya", "nils", "olga", "paul",
]
# Letters that cannot be misread as digits, like real order-number schemes.
ORDER_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"

# Facts the answers state and the pretraining corpus repeats: the model can
# "know" the policy from pretraining; what fine-tuning adds is the mapping.
RETURN_DAYS = 30
REFUND_DAYS = 5
WARRANTY_MONTHS = 24
PHONE = "0800 555 0199"


def _next_delivery_day(weekday: str) -> str:
    """Couriers do not run on Sunday, so a missed Saturday becomes Monday."""
    i = WEEKDAYS.index(weekday)
    nxt = WEEKDAYS[(i + 1) % 7]
    return "Monday" if nxt == "Sunday" else nxt


def _store_hours(weekday: str) -> str:
    if weekday == "Sunday":
        return "closed"
    if weekday == "Saturday":
        return "open from 10 am to 4 pm"
    return "open from 9 am to 7 pm"


def draw_slots(rng: random.Random) -> dict:
    """Draw one value for every slot; each intent only uses the ones it names.

    Drawing all of them every time (instead of only the needed ones) keeps the
    random stream simple; the cost is irrelevant at this size.
    """
    size_from, size_to = rng.sample(SIZES, 2)
    percent = rng.choice(PROMO_PERCENTS)
    name = rng.choice(NAMES)
    return {
        "order": f"{rng.choice(ORDER_LETTERS)}{rng.randint(1000, 9999)}",
        "product": rng.choice(PRODUCTS),
        "clothing": rng.choice(CLOTHING),
        "gadget": rng.choice(ELECTRONICS),
        "city": rng.choice(CITIES),
        "weekday": rng.choice(WEEKDAYS),
        # Couriers never come on Sunday, so a missed delivery is Monday..Saturday.
        "delivery_day": rng.choice(WEEKDAYS[:6]),
        "months": str(rng.randint(1, 48)),
        "service": rng.choice(["standard", "express"]),
        "size_from": size_from,
        "size_to": size_to,
        "method": rng.choice(PAYMENT_METHODS),
        "plan": rng.choice(PLANS),
        "code": f"{rng.choice(PROMO_WORDS)}{percent}",
        "percent": str(percent),
        "card": f"GC{rng.randint(10000, 99999)}",
        "tracking": f"TR{rng.randint(100000, 999999)}",
        "email": f"{name}{rng.randint(1, 99)}@example.com" if rng.random() < 0.6 else f"{name}@example.com",
    }


# ---------------------------------------------------------------------------
# 2. Intents: question templates, answer templates, and which slots they share
# ---------------------------------------------------------------------------
# Every question template of an intent mentions all of that intent's `slots`,
# and every answer template repeats all of them. That invariant is what makes
# the task "copy the right values into the right answer pattern", and the
# tests check it. Some answers also contain *derived* values (next delivery
# day, in/out of warranty, store hours for a weekday, the promo percentage) so
# a model has to do a little more than copy.


INTENTS: dict[str, dict] = {
    "order_status": {
        "slots": ["order"],
        "questions": [
            "Where is my order {order}?",
            "What is the status of order {order}?",
            "Has order {order} shipped yet?",
            "Can you check on my order {order}?",
            "I am still waiting for order {order}, any news?",
            "When will order {order} arrive?",
        ],
        "answers": [
            "Order {order} has been packed and leaves our warehouse within 1 business day. You will get an email with tracking.",
            "I checked order {order}: it is on its way and should arrive in 2 to 4 business days.",
            "Order {order} is being prepared. We will email you as soon as it ships.",
        ],
    },
    "refund_status": {
        "slots": ["order"],
        "questions": [
            "When will I get my refund for order {order}?",
            "I returned order {order}, where is my money?",
            "Has the refund for order {order} been sent?",
            "How long does the refund for order {order} take?",
            "I am still waiting on a refund for order {order}.",
        ],
        "answers": [
            "Refunds for order {order} are issued within {refund_days} business days after the return reaches us.",
            "The refund for order {order} goes back to your original payment method within {refund_days} business days.",
            "Once we receive order {order}, your refund is sent within {refund_days} business days.",
        ],
    },
    "return_label": {
        "slots": ["product", "order"],
        "questions": [
            "I need a return label for the {product} from order {order}.",
            "How do I send back the {product} from order {order}?",
            "Can I get a label to return the {product} in order {order}?",
            "I want to return the {product} I bought in order {order}.",
        ],
        "answers": [
            "A free return label for the {product} from order {order} is on its way to your email. Returns are accepted within {return_days} days.",
            "Sure. Print the label we just emailed for order {order} and drop the {product} at any post office within {return_days} days.",
        ],
    },
    "shipping_time": {
        "slots": ["service", "city"],
        "questions": [
            "How long does {service} shipping to {city} take?",
            "If I pick {service} delivery, when will my parcel reach {city}?",
            "What is the delivery time to {city} with {service} shipping?",
            "How fast is {service} shipping to {city}?",
        ],
        "answers": [
            "Parcels to {city} with {service} shipping {shipping_eta}.",
            "With {service} delivery, parcels to {city} {shipping_eta}.",
        ],
    },
    "change_address": {
        "slots": ["order", "city"],
        "questions": [
            "Please change the delivery address of order {order} to my new flat in {city}.",
            "Can I send order {order} to an address in {city} instead?",
            "I moved to {city}, can you update the address for order {order}?",
            "I need order {order} delivered to {city}, not my old address.",
        ],
        "answers": [
            "Done. Order {order} will now go to your new address in {city}, as long as it has not shipped yet.",
            "I updated order {order} to deliver to {city}. If it has already shipped, the courier will redirect it.",
        ],
    },
    "cancel_order": {
        "slots": ["order"],
        "questions": [
            "Please cancel order {order}.",
            "I want to cancel my order {order}.",
            "Can I still cancel order {order}?",
            "I ordered by mistake, cancel {order} please.",
            "How do I cancel order {order}?",
        ],
        "answers": [
            "Order {order} is cancelled. Your payment will be refunded within {refund_days} business days.",
            "I have cancelled order {order}. You will see the refund within {refund_days} business days.",
        ],
    },
    "password_reset": {
        "slots": ["email"],
        "questions": [
            "I forgot my password, my email is {email}.",
            "Please reset the password for {email}.",
            "I cannot log in with {email}, how do I reset my password?",
            "Send a password reset link to {email} please.",
        ],
        "answers": [
            "We sent a reset link to {email}. The link works for 24 hours.",
            "A password reset email is on its way to {email}. Check your spam folder if you do not see it.",
        ],
    },
    "payment_failed": {
        "slots": ["method"],
        "questions": [
            "My payment with my {method} failed.",
            "Why was my {method} declined at checkout?",
            "I cannot pay with my {method}, what is wrong?",
            "The checkout keeps rejecting my {method}.",
        ],
        "answers": [
            "Sorry about that. Please check that your {method} details are up to date, or try another payment method.",
            "Payments with a {method} can fail if the bank blocks them. Please contact your bank or use another method.",
        ],
    },
    "warranty": {
        "slots": ["gadget", "months"],
        "questions": [
            "Is my {gadget} still under warranty? I bought it {months} months ago.",
            "I bought a {gadget} {months} months ago and it broke. Is it covered?",
            "My {gadget} stopped working after {months} months, does the warranty apply?",
            "Does the warranty cover a {gadget} that is {months} months old?",
        ],
        "answers": [
            "{warranty_sentence}",
        ],
    },
    "store_hours": {
        "slots": ["city", "weekday"],
        "questions": [
            "When is your {city} store open on {weekday}?",
            "What are the opening hours of the {city} shop on {weekday}?",
            "Is the {city} store open on {weekday}?",
            "Can I visit the {city} store on {weekday}?",
        ],
        "answers": [
            "On {weekday} our {city} store is {hours}.",
            "Our {city} store is {hours} on {weekday}.",
        ],
    },
    "gift_card_balance": {
        "slots": ["card"],
        "questions": [
            "How much is left on gift card {card}?",
            "Can you check the balance of gift card {card}?",
            "What is the balance on my gift card {card}?",
            "How do I see the balance of card {card}?",
        ],
        "answers": [
            "You can see the balance of gift card {card} under My Account, Gift cards. Balances never expire.",
            "The balance of gift card {card} is shown under My Account. Gift cards never expire.",
        ],
    },
    "damaged_item": {
        "slots": ["product", "order"],
        "questions": [
            "The {product} in order {order} arrived broken.",
            "My {product} from order {order} came damaged.",
            "Order {order} arrived and the {product} is cracked.",
            "What can I do? The {product} in order {order} is damaged.",
        ],
        "answers": [
            "We are sorry the {product} from order {order} arrived damaged. Reply with a photo and we will send a free replacement.",
            "Sorry about the {product} in order {order}. Send us a photo and we ship a new one at no cost.",
        ],
    },
    "invoice": {
        "slots": ["order"],
        "questions": [
            "Can I get an invoice for order {order}?",
            "Where do I find the invoice for order {order}?",
            "Please send me the invoice of order {order}.",
            "I need a receipt for order {order} for my company.",
        ],
        "answers": [
            "You can download the invoice for order {order} under My Orders. We can also email it to you.",
            "The invoice for order {order} is in My Orders as a PDF. I have also emailed you a copy.",
        ],
    },
    "subscription_cancel": {
        "slots": ["plan"],
        "questions": [
            "How do I cancel my {plan} membership?",
            "Please end my {plan} subscription.",
            "I want to stop paying for the {plan} plan.",
            "Can I cancel the {plan} membership today?",
        ],
        "answers": [
            "Your {plan} membership is cancelled. You keep its benefits until the end of this billing month.",
            "I cancelled your {plan} plan. It stays active until the end of the current month and will not renew.",
        ],
    },
    "size_exchange": {
        "slots": ["clothing", "size_from", "size_to"],
        "questions": [
            "Can I swap my {clothing} in size {size_from} for a size {size_to}?",
            "The {clothing} in {size_from} does not fit, I need {size_to}.",
            "I want to exchange a {clothing} size {size_from} for size {size_to}.",
            "Do you have the {clothing} in {size_to}? Mine is {size_from}.",
        ],
        "answers": [
            "Of course. Send the {clothing} in size {size_from} back with the free label and we ship size {size_to} right away.",
            "Yes, we can exchange the {clothing}. Return the size {size_from} and we will send size {size_to} for free.",
        ],
    },
    "track_parcel": {
        "slots": ["tracking"],
        "questions": [
            "Can you track parcel {tracking} for me?",
            "Where is parcel {tracking} right now?",
            "My tracking number is {tracking}, where is it?",
            "Tracking {tracking} has not moved for days.",
        ],
        "answers": [
            "Parcel {tracking} is with our courier. You can follow it live on the {shop} tracking page.",
            "I looked up {tracking}: the parcel is in transit and the courier will update the status soon.",
        ],
    },
    "promo_code": {
        "slots": ["code"],
        "questions": [
            "The code {code} does not work at checkout.",
            "How do I use the promo code {code}?",
            "What discount does {code} give?",
            "Is the code {code} still valid?",
        ],
        "answers": [
            "The code {code} takes {percent}% off orders over 40 dollars. Enter it in the basket before you pay.",
            "{code} gives you {percent}% off once per account. It only works on orders over 40 dollars.",
        ],
    },
    "account_delete": {
        "slots": ["email"],
        "questions": [
            "Please delete my account {email}.",
            "How do I close the account for {email}?",
            "I want all my data removed, my email is {email}.",
            "Delete the account registered to {email}.",
        ],
        "answers": [
            "We started deleting the account for {email}. It takes up to 30 days and cannot be undone.",
            "The account {email} is scheduled for deletion. You will get a confirmation email when it is done.",
        ],
    },
    "contact_human": {
        "slots": [],
        "questions": [
            "Can I talk to a real person?",
            "I want to speak to a human.",
            "How do I reach your support team by phone?",
            "Is there a phone number I can call?",
            "Please connect me to an agent.",
            "Can someone from support call me?",
        ],
        "answers": [
            "You can call us at {phone}, Monday to Friday from 8 am to 8 pm, or use the live chat.",
            "Our agents answer the phone at {phone} on weekdays from 8 am to 8 pm.",
        ],
    },
    "delivery_missed": {
        "slots": ["order", "delivery_day"],
        "questions": [
            "The courier missed me on {delivery_day} with order {order}.",
            "I was not home on {delivery_day} when order {order} came.",
            "I missed the delivery of order {order} on {delivery_day}.",
            "Nobody was home on {delivery_day} for order {order}, what now?",
        ],
        "answers": [
            "Sorry we missed you on {delivery_day}. The courier will try order {order} again on {next_day}.",
            "No problem. After the missed {delivery_day} visit, order {order} will be delivered again on {next_day}.",
        ],
    },
}

OPENERS = ["", "", "", "Hi, ", "Hello, ", "Hey, "]
CLOSERS = ["", "", "", " Thanks.", " Thank you!"]


def _answer_fields(slots: dict) -> dict:
    """Slot values plus the facts and derived values answer templates may use."""
    fields = dict(slots)
    fields.update(
        shop=SHOP,
        phone=PHONE,
        refund_days=REFUND_DAYS,
        return_days=RETURN_DAYS,
        shipping_eta=(
            "takes 2 to 4 business days" if slots["service"] == "standard" else "arrives the next business day"
        ),
        hours=_store_hours(slots["weekday"]),
        next_day=_next_delivery_day(slots["delivery_day"]),
    )
    if int(slots["months"]) <= WARRANTY_MONTHS:
        fields["warranty_sentence"] = (
            f"Yes. A {slots['gadget']} bought {slots['months']} months ago is still inside "
            f"our {WARRANTY_MONTHS} month warranty, so the repair is free."
        )
    else:
        fields["warranty_sentence"] = (
            f"Sorry, a {slots['gadget']} bought {slots['months']} months ago is past our "
            f"{WARRANTY_MONTHS} month warranty. We can offer a paid repair."
        )
    return fields


def _question(rng: random.Random, template: str, slots: dict) -> str:
    text = template.format(**slots)
    opener = rng.choice(OPENERS)
    closer = rng.choice(CLOSERS)
    # "Hi, where is ..." reads naturally; but keep "I" and acronyms capitalised.
    if opener and not (text.startswith("I ") or (text[:1].isupper() and text[1:2].isupper())):
        text = text[0].lower() + text[1:]
    return f"{opener}{text}{closer}"


def draw_example(rng: random.Random, intent: str | None = None) -> dict:
    """One random (question, answer) draw with its metadata."""
    if intent is None:
        intent = rng.choice(sorted(INTENTS))
    spec = INTENTS[intent]
    slots = draw_slots(rng)
    question = _question(rng, rng.choice(spec["questions"]), slots)
    answer = rng.choice(spec["answers"]).format(**_answer_fields(slots))
    return {
        "intent": intent,
        "prompt": question,
        "response": answer,
        "slots": {name: slots[name] for name in spec["slots"]},
    }


def _unique_draws(rng: random.Random, n: int, key: str, draw=None, same=lambda text: text) -> list[dict]:
    """Draw (`draw(rng)`, default `draw_example`) until we have n examples whose `key` text is unique
    (`same(text)` equal counts as the same text).

    Slot-free intents (contact_human) only have a few dozen distinct phrasings;
    once they are used up, further draws of that intent are simply rejected,
    so the loop needs an attempt budget rather than an exact count.
    """
    draw = draw or draw_example
    seen: set[str] = set()
    out: list[dict] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n:
            raise RuntimeError(f"could only draw {len(out)} unique examples out of {n}")
        ex = draw(rng)
        if same(ex[key]) in seen:
            continue
        seen.add(same(ex[key]))
        out.append(ex)
    return out


def _rng(seed: int, stream: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so this is stable across
    # Python runs (no PYTHONHASHSEED dependence) and gives every output its own
    # independent stream: the intents file is a different draw than the QA file.
    return random.Random(f"ftsweep-demo:{stream}:{seed}")


def generate_qa(seed: int = DEFAULT_SEED, n: int = N_QA, with_meta: bool = False) -> list[dict]:
    """`n` QA records with unique prompts: {"prompt", "response"} (+ intent/slots if with_meta)."""
    records = _unique_draws(_rng(seed, "qa"), n, key="prompt")
    if with_meta:
        return records
    return [{"prompt": r["prompt"], "response": r["response"]} for r in records]


def generate_intents(seed: int = DEFAULT_SEED, n: int = N_INTENTS) -> list[dict]:
    """`n` classification records with unique texts: {"text", "label"} (label = intent name)."""
    records = _unique_draws(_rng(seed, "intents"), n, key="prompt")
    return [{"text": r["prompt"], "label": r["intent"]} for r in records]


# ---------------------------------------------------------------------------
# 2a. Routing as chat: the intents' messages, answered with the team that takes them
# ---------------------------------------------------------------------------
# The same texts as the intents, as `messages` rows whose assistant turn names one of four teams in a
# fixed sentence. The team is one word of the reply, so a trial can lower the loss by learning the
# sentence while routing badly: the data of the answer metrics (choice_accuracy with an answer_pattern).

TEAMS = {
    "billing": ["gift_card_balance", "invoice", "payment_failed", "promo_code", "refund_status", "subscription_cancel"],
    "shipping": ["change_address", "delivery_missed", "order_status", "shipping_time", "track_parcel"],
    "returns": ["cancel_order", "damaged_item", "return_label", "size_exchange", "warranty"],
    "account": ["account_delete", "contact_human", "password_reset", "store_hours"],
}
ROUTING_REPLY = "I have passed your message to our {team} team."


def generate_routing(intents: list[dict]) -> list[dict]:
    """The intent records as chat: {"messages": [user: text, assistant: ROUTING_REPLY with the intent's team]}."""
    team_of = {intent: team for team, members in TEAMS.items() for intent in members}
    return [{"messages": [{"role": "user", "content": r["text"]},
                          {"role": "assistant", "content": ROUTING_REPLY.format(team=team_of[r["label"]])}]}
            for r in intents]


# ---------------------------------------------------------------------------
# 2b. Intents with a customer group: data for fairness metrics
# ---------------------------------------------------------------------------
# Where a request came from: the app's chat box, an email, or a phone call transcribed. How often
# each channel is used depends on the intent (people phone about missed deliveries, email for
# invoices, use the app for promo codes), and each channel writes a little differently (emails
# are wrapped in greetings and sign-offs; transcripts are lower case, without punctuation, with
# fillers and spoken email addresses). A classifier can therefore do better on one group than on
# another, which is what group-wise metrics and gaps are meant to show.

GROUP_COLUMN = "customer_group"
CUSTOMER_GROUPS = ("app", "email", "phone")
# Share of each group per intent, (app, email, phone); intents not listed use the default.
GROUP_MIX_DEFAULT = (0.55, 0.3, 0.15)
GROUP_MIX: dict[str, tuple[float, float, float]] = {
    "contact_human": (0.1, 0.15, 0.75),
    "delivery_missed": (0.25, 0.15, 0.6),
    "payment_failed": (0.35, 0.15, 0.5),
    "invoice": (0.15, 0.75, 0.1),
    "account_delete": (0.2, 0.65, 0.15),
    "damaged_item": (0.3, 0.55, 0.15),
    "password_reset": (0.75, 0.15, 0.1),
    "promo_code": (0.8, 0.15, 0.05),
    "track_parcel": (0.7, 0.1, 0.2),
    "gift_card_balance": (0.75, 0.1, 0.15),
}
EMAIL_GREETINGS = ["Dear {shop} team, ", "Hello, ", "Good afternoon, ", "Dear support, ", "Hi there, "]
EMAIL_SIGNOFFS = ["Kind regards, {name}.", "Best wishes, {name}.", "Thanks in advance, {name}.", "Regards, {name}."]
PHONE_OPENERS = ["", "", "yeah hi ", "hello um ", "uh ", "hi so ", "yes hello "]
PHONE_CLOSERS = ["", "", " thanks", " thank you bye", " yeah"]


def _email_style(rng: random.Random, text: str) -> str:
    greeting = rng.choice(EMAIL_GREETINGS).format(shop=SHOP)
    signoff = rng.choice(EMAIL_SIGNOFFS).format(name=rng.choice(NAMES).capitalize())
    if not (text.startswith("I ") or (text[:1].isupper() and text[1:2].isupper())):
        text = text[0].lower() + text[1:]
    return f"{greeting}{text} {signoff}"


def _phone_style(rng: random.Random, text: str) -> str:
    """A call transcript: lower case, no punctuation, email addresses spoken, a filler or two."""
    words = []
    for word in text.split():
        if "@" in word:
            word = word.rstrip(".,!?").replace("@", " at ").replace(".", " dot ")
        words.append("".join(ch for ch in word.lower() if ch.isalnum() or ch == " "))
    spoken = " ".join(w for w in " ".join(words).split() if w)
    return f"{rng.choice(PHONE_OPENERS)}{spoken}{rng.choice(PHONE_CLOSERS)}"


def draw_group_example(rng: random.Random) -> dict:
    """One {"text", "label", "customer_group"} draw: intent, then its group, then text in that group's style."""
    intent = rng.choice(sorted(INTENTS))
    group = rng.choices(CUSTOMER_GROUPS, weights=GROUP_MIX.get(intent, GROUP_MIX_DEFAULT))[0]
    spec = INTENTS[intent]
    slots = draw_slots(rng)
    template = rng.choice(spec["questions"])
    if group == "app":
        text = _question(rng, template, slots)
    elif group == "email":
        text = _email_style(rng, template.format(**slots))
    else:
        text = _phone_style(rng, template.format(**slots))
    return {"text": text, "label": intent, GROUP_COLUMN: group}


def generate_intents_groups(seed: int = DEFAULT_SEED, n: int = N_GROUPS) -> list[dict]:
    """`n` records with unique texts: {"text", "label", "customer_group"}; its own random stream, so
    the other files do not change when this one is (re)built. Unique even once lowercased and without
    punctuation (a phone transcript of an app message is the same question): otherwise validation or
    test rows would repeat training rows, which `ftsweep validate-data` rightly calls leakage."""
    return _unique_draws(_rng(seed, "intents-groups"), n, key="text", draw=draw_group_example, same=_normalized)


def _normalized(text: str) -> str:
    # As objectives.data.checks.normalize: lowercase, punctuation dropped, whitespace collapsed.
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


# ---------------------------------------------------------------------------
# 3. Pretraining corpus: the shop's "web pages", never QA pairs
# ---------------------------------------------------------------------------

POLICY_SENTENCES = [
    f"{SHOP} is an online shop for clothing, small electronics and homeware.",
    f"Refunds are issued to the original payment method within {REFUND_DAYS} business days.",
    "A refund starts as soon as the returned parcel reaches our warehouse.",
    f"You can return most items within {RETURN_DAYS} days of delivery.",
    "Return labels are free and are sent by email.",
    "Drop your return parcel at any post office.",
    "Standard shipping takes 2 to 4 business days.",
    "Express shipping arrives the next business day.",
    "Orders leave our warehouse within 1 business day.",
    "You get an email with a tracking link when your order ships.",
    "You can change the delivery address until the order ships.",
    "If an order has already shipped, the courier can redirect it.",
    f"Cancelled orders are refunded within {REFUND_DAYS} business days.",
    "Password reset links are valid for 24 hours.",
    "If a reset email does not arrive, check the spam folder.",
    "We accept Visa, Mastercard, Amex, debit cards and PayPal.",
    "A payment can fail when the bank blocks it or the card details are out of date.",
    f"Every electronic product comes with a {WARRANTY_MONTHS} month warranty.",
    "Repairs inside the warranty are free.",
    "After the warranty ends we offer paid repairs.",
    "Our stores open from 9 am to 7 pm on weekdays.",
    "On Saturday our stores open from 10 am to 4 pm.",
    "All stores are closed on Sunday.",
    "Gift cards never expire.",
    "The balance of a gift card is shown under My Account.",
    "If an item arrives damaged, send us a photo and we ship a free replacement.",
    "Invoices can be downloaded as a PDF under My Orders.",
    "Memberships can be cancelled at any time.",
    "A cancelled membership stays active until the end of the billing month.",
    "Clothing can be exchanged for another size for free.",
    "The courier updates the tracking page several times a day.",
    "Promo codes work once per account on orders over 40 dollars.",
    "A promo code is entered in the basket before you pay.",
    "Deleting an account takes up to 30 days and cannot be undone.",
    f"You can call support at {PHONE}.",
    "Our agents answer the phone Monday to Friday from 8 am to 8 pm.",
    "The live chat is open every day.",
    "Couriers do not deliver on Sunday.",
    "If the courier misses you, it tries again on the next delivery day.",
    "A delivery missed on Saturday is tried again on Monday.",
    "Membership plans are Basic, Plus, Premium and Family.",
    "Sizes run from XS to XL.",
]

PRODUCT_SENTENCES = [
    "The {p} is one of our best sellers.",
    "Our {p} ships from the warehouse within 1 business day.",
    "Customers love the {p} for everyday use.",
    "The {p} can be returned within {rd} days.",
    "The {p} is in stock in our {c} store.",
    "This week the {p} is on sale in {c}.",
]
STORE_SENTENCES = [
    "Our {c} store is {h} on {w}.",
    "On {w} the {c} shop is {h}.",
    "The {c} store has a pickup desk for online orders.",
    "Standard shipping to {c} takes 2 to 4 business days.",
    "Express parcels to {c} arrive the next business day.",
]


def generate_pretrain_texts(seed: int = DEFAULT_SEED, n_docs: int = 8000) -> list[str]:
    """Short documents for pretraining.

    A mix of (a) policy paragraphs, (b) product and store blurbs, (c) runs of
    customer questions with no answers and (d) runs of agent replies with no
    questions. Questions and replies come from separate random draws, so a
    question is never followed by its own answer: the pairing is left for
    fine-tuning to teach.
    """
    rng = _rng(seed, "pretrain")
    docs: list[str] = []
    for _ in range(n_docs):
        kind = rng.random()
        if kind < 0.25:
            sents = rng.sample(POLICY_SENTENCES, rng.randint(2, 5))
        elif kind < 0.45:
            sents = []
            for _ in range(rng.randint(2, 4)):
                w = rng.choice(WEEKDAYS)
                template = rng.choice(PRODUCT_SENTENCES + STORE_SENTENCES)
                sents.append(
                    template.format(p=rng.choice(PRODUCTS), c=rng.choice(CITIES), w=w, h=_store_hours(w), rd=RETURN_DAYS)
                )
        elif kind < 0.72:
            sents = [draw_example(rng)["prompt"] for _ in range(rng.randint(1, 3))]
        else:
            sents = [draw_example(rng)["response"] for _ in range(rng.randint(1, 3))]
        docs.append(" ".join(sents))
    return docs


# ---------------------------------------------------------------------------
# 4. Tokenizer
# ---------------------------------------------------------------------------


def build_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE trained on `texts`, wrapped as a transformers fast tokenizer.

    Byte-level (GPT-2 style) pre-tokenization means no <unk> ever appears and
    decode(encode(x)) gives back x exactly, spaces and newlines included.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    # add_prefix_space=False: "Answer: yes" must not gain a leading space on
    # round-trip, and prompts are usually concatenated, not word lists.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols, so unseen characters still encode (no <unk>).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    # transformers 5: PreTrainedTokenizerFast is an alias of TokenizersBackend.
    # Passing add_bos_token explicitly makes it install the Llama-style
    # "<s> $A" post-processor itself and save the flag in tokenizer_config.json,
    # so a reload behaves the same.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        add_bos_token=True,
        add_eos_token=False,
        padding_side="right",
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------------------
# 5. Model and pretraining
# ---------------------------------------------------------------------------


def build_model(tokenizer, seed: int = DEFAULT_SEED):
    """A ~0.2M-parameter Llama: big enough to learn the task, small enough for CI."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA, so LoRA target shapes look like real Llamas
        max_position_embeddings=256,
        tie_word_embeddings=True,  # embeddings dominate the size; tie to halve them
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.to(torch.float32)


def build_gpt2_tokenizer(texts: list[str], vocab_size: int = GPT2_VOCAB_SIZE):
    """GPT-2 conventions: byte-level BPE, one special token for start, end and unknown, nothing added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[GPT2_EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=GPT2_EOT, eos_token=GPT2_EOT, unk_token=GPT2_EOT,
                                   padding_side="right", model_max_length=256, clean_up_tokenization_spaces=False)


def build_gpt2_model(tokenizer, seed: int = DEFAULT_SEED):
    """A GPT-2 of the Llama's size class, with GPT-2's default dropouts (embedding, attention, residual 0.1)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=4, n_inner=172,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).to(torch.float32)


def _save_tokenizer(tokenizer, model_dir: Path) -> None:
    """save_pretrained, then name the class portably in tokenizer_config.json.

    transformers 5 records "TokenizersBackend", a class transformers 4 does not
    have, while both majors load "PreTrainedTokenizerFast" from tokenizer.json
    (in 5 it is an alias of TokenizersBackend). The <s> prefix lives in the
    post-processor inside tokenizer.json: transformers 5 deliberately does not
    save add_bos_token, so after a reload `tokenizer.add_bos_token` reads False
    even though <s> is still added.
    """
    tokenizer.save_pretrained(model_dir)
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _pack(tokenizer, texts: list[str], seq_len: int, seed: int):
    """Tokenize every document as "<s> text </s>", shuffle, concatenate, cut into blocks.

    Packing wastes no compute on padding, and the <s>/</s> markers still teach
    the model where documents start and stop.
    """
    import torch

    ids: list[int] = []
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    encoded = tokenizer([texts[i] for i in order], add_special_tokens=True)["input_ids"]
    for doc in encoded:
        ids.extend(doc)
        ids.append(tokenizer.eos_token_id)
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        raise ValueError("pretraining corpus shorter than one block")
    return torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def pretrain(
    model,
    tokenizer,
    texts: list[str],
    steps: int,
    batch_size: int = 32,
    seq_len: int = 64,
    lr: float = 3e-3,
    warmup_frac: float = 0.05,
    weight_decay: float = 0.01,
    seed: int = DEFAULT_SEED,
    log_every: int = 50,
    log=print,
) -> list[float]:
    """Plain causal-LM training loop; returns the loss of every step."""
    import torch

    blocks = _pack(tokenizer, texts, seq_len, seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    warmup = max(1, int(steps * warmup_frac))

    def lr_lambda(step: int) -> float:
        # Linear warmup, then cosine decay to 10% of the peak.
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    model.train()
    losses: list[float] = []
    perm = torch.randperm(len(blocks), generator=gen)
    cursor = 0
    t0 = time.perf_counter()
    for step in range(steps):
        # Walk through shuffled blocks epoch by epoch so every block is seen.
        if cursor + batch_size > len(perm):
            perm = torch.randperm(len(blocks), generator=gen)
            cursor = 0
        batch = blocks[perm[cursor : cursor + batch_size]]
        cursor += batch_size
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if log and (step % log_every == 0 or step == steps - 1):
            log(f"  step {step + 1:5d}/{steps}  loss {losses[-1]:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.perf_counter() - t0:6.1f}s")
    model.eval()
    return losses


# ---------------------------------------------------------------------------
# 6. Writing files and provenance
# ---------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fixed key order, ASCII-safe, "\n" line ends: identical bytes on every OS.
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def _asset_files(out: Path) -> list[Path]:
    """Every built file except the provenance files themselves (they cannot hash themselves)."""
    found = []
    for sub in ("datasets", "models"):
        root = out / sub
        if root.is_dir():
            found.extend(p for p in root.rglob("*") if p.is_file())
    return sorted(found)


def format_prompt(prompt: str) -> str:
    return PROMPT_TEMPLATE.format(prompt=prompt)


def format_example(prompt: str, response: str) -> str:
    return EXAMPLE_TEMPLATE.format(prompt=prompt, response=response)


def _one_line(template: str) -> str:
    """Show a template's newline as the two characters \\n, as in the manifest."""
    return template.replace("\n", "\\n")


def write_provenance(out: Path, manifest: dict) -> None:
    manifest["files"] = {
        p.relative_to(out).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _asset_files(out)
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(manifest), encoding="utf-8")


def _readme(m: dict) -> str:
    data = m.get("datasets", {})
    model = m.get("model", {})
    lines = [
        "# ftsweep embedded demo assets",
        "",
        "Generated by `scripts/build_demo_assets.py`; do not edit by hand. Rebuild with",
        "the commands below and commit the result together with the updated manifest.",
        "",
        "## Datasets",
        "",
    ]
    if data:
        lines += [
            f"Build command: `{data['command']}` (seed {data['seed']})",
            "",
            f"- `{QA_FILE}`: {data['qa_records']} lines of `{{\"prompt\", \"response\"}}`,",
            f"  unique prompts, {data['n_intents']} intents of a fictional shop ({SHOP}).",
            f"- `{INTENTS_FILE}`: {data['intent_records']} lines of `{{\"text\", \"label\"}}`,",
            "  string labels = intent names; an independent random draw from the QA file.",
            "",
            "Answers repeat the slot values of their question (order numbers, products,",
            "cities, weekdays, sizes, codes, emails) and some contain derived values",
            "(next delivery day, in/out of warranty, store hours for a weekday).",
            "The dataset bytes are a pure function of the seed (Python `random`).",
            "",
            f"Intents: {', '.join(data['intents'])}.",
        ]
    else:
        lines.append("Not built.")
    groups = m.get("groups_dataset")
    if groups:
        shares = ", ".join(f"{g} {n}" for g, n in groups["group_counts"].items())
        lines += [
            "",
            f"Build command: `{groups['command']}` (seed {groups['seed']})",
            "",
            f"- `{GROUPS_FILE}`: {groups['records']} lines of `{{\"text\", \"label\", \"{GROUP_COLUMN}\"}}`,",
            f"  the same 20 intents with the channel a request came from (rows per group: {shares}).",
            "  Each intent has its own mix of channels, and each channel its own style: app",
            "  messages as in the intents file, emails with a greeting and a sign-off, phone",
            "  transcripts in lower case without punctuation. Data for fairness metrics.",
        ]
    lines += ["", "## Model: `models/tiny-support-lm`", ""]
    if model:
        lines += [
            f"Build command: `{model['command']}` (seed {model['seed']})",
            "",
            f"- Architecture: `LlamaForCausalLM`, {model['parameters']:,} parameters, float32,",
            "  hidden 64, intermediate 172, 2 layers, 4 heads, 2 KV heads, tied embeddings,",
            "  max 256 positions.",
            f"- Tokenizer: byte-level BPE, vocabulary {model['vocab_size']} (incl. `<unk> <s> </s> <pad>`),",
            "  adds `<s>` in front of every encoded text, never adds `</s>` by itself.",
            f"- Pretraining: {model['pretrain']['steps']} AdamW steps, batch {model['pretrain']['batch_size']}"
            f" x {model['pretrain']['seq_len']} tokens, peak lr {model['pretrain']['lr']},",
            f"  cosine schedule, on {model['pretrain']['documents']} domain documents"
            f" ({model['pretrain']['tokens']:,} tokens): policy pages, product/store blurbs,",
            "  loose customer questions and loose agent replies. Never question/answer pairs.",
            f"- Loss: {model['pretrain']['first_loss']:.4f} at step 1, "
            f"{model['pretrain']['final_loss']:.4f} final (mean of the last 10 steps).",
            f"- Built in {model['build_wall_seconds']:.1f} s on {model['host']['cpu_threads']} CPU threads "
            f"(torch {model['host']['torch']}, transformers {model['host']['transformers']}).",
            f"- Checkpoint size: {model['checkpoint_bytes']:,} bytes.",
            "",
            "Fine-tuning format this model was built for (the tokenizer adds `<s>`;",
            "`</s>` in the text is encoded as the EOS token):",
            "",
            "```",
            _one_line(EXAMPLE_TEMPLATE),
            "```",
            "",
            f"Prompt part: `{_one_line(PROMPT_TEMPLATE)}` (no trailing space). Its tokens are an exact",
            "prefix of the full example's tokens, so mask / generate from there; with a",
            "trailing space the last prompt token would differ (byte-level BPE attaches the",
            "space to the next word).",
            "",
            f"{model['fit_in_64_tokens_pct']:.1f}% of the QA examples fit in {MAX_EXAMPLE_TOKENS} tokens in this format.",
            "",
            "The same seed, torch build and thread count reproduce the same weights;",
            "the sha256 below pins the committed checkpoint.",
        ]
    else:
        lines.append("Not built.")
    gpt2 = m.get("gpt2_model")
    lines += ["", f"## Model: `{GPT2_DIR}`", ""]
    if gpt2:
        lines += [
            f"Build command: `{gpt2['command']}` (seed {gpt2['seed']})",
            "",
            f"- Architecture: `GPT2LMHeadModel`, {gpt2['parameters']:,} parameters, float32, n_embd 64,",
            "  2 layers, 4 heads, inner 172, GPT-2's default dropouts (0.1).",
            f"- Tokenizer: its own byte-level BPE, vocabulary {gpt2['vocab_size']}, GPT-2's single",
            f"  `{GPT2_EOT}` special token, nothing added to encoded text: not the Llama's tokenizer,",
            "  so a sweep over both models tokenizes the data once per tokenizer.",
            f"- Pretraining: {gpt2['pretrain_steps']} steps on the same domain documents; loss "
            f"{gpt2['first_loss']:.4f} at step 1, {gpt2['final_loss']:.4f} final.",
            f"- Built in {gpt2['build_wall_seconds']:.1f} s; checkpoint {gpt2['checkpoint_bytes']:,} bytes.",
        ]
    else:
        lines.append("Not built.")
    lines += ["", "## Files", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    for name, info in m["files"].items():
        lines.append(f"| `{name}` | {info['bytes']:,} | `{info['sha256']}` |")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# 7. CLI
# ---------------------------------------------------------------------------


def _command(args: argparse.Namespace) -> str:
    """The exact command that reproduces this build, with every default spelled out."""
    parts = ["python scripts/build_demo_assets.py"]
    if Path(args.out).resolve() != DEFAULT_OUT.resolve():
        parts.append(f"--out {args.out}")
    parts += [f"--seed {args.seed}", f"--pretrain-steps {args.pretrain_steps}", f"--only {args.only}"]
    return " ".join(parts)


def _build_gpt2(out: Path, qa: list[dict], intents: list[dict], seed: int, command: str, t_start: float) -> dict:
    """The second bundled model: same corpus, another architecture and tokenizer (GPT2_PRETRAIN_STEPS steps)."""
    import torch
    import transformers

    torch.set_num_threads(2)
    texts = generate_pretrain_texts(seed)
    tokenizer = build_gpt2_tokenizer(texts + [format_example(r["prompt"], r["response"]) for r in qa]
                                     + [r["text"] for r in intents])
    model = build_gpt2_model(tokenizer, seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"gpt2: {n_params:,} parameters, tokenizer {len(tokenizer)} tokens; pretraining {GPT2_PRETRAIN_STEPS} steps")
    losses = pretrain(model, tokenizer, texts, GPT2_PRETRAIN_STEPS, batch_size=32, seq_len=64, lr=3e-3, seed=seed)
    model_dir = out / GPT2_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    for old in model_dir.iterdir():
        if old.is_file():
            old.unlink()
    model.save_pretrained(model_dir)
    _save_tokenizer(tokenizer, model_dir)
    tail = losses[-10:]
    return {
        "command": command, "seed": seed, "parameters": n_params, "vocab_size": len(tokenizer),
        "pretrain_steps": GPT2_PRETRAIN_STEPS, "first_loss": round(losses[0], 4),
        "final_loss": round(sum(tail) / len(tail), 4),
        "checkpoint_bytes": sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file()),
        "build_wall_seconds": round(time.perf_counter() - t_start, 1),
        "host": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                 "transformers": transformers.__version__},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: objectives/assets)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--pretrain-steps", type=int, default=DEFAULT_PRETRAIN_STEPS)
    parser.add_argument("--only", choices=["data", "groups", "routing", "model", "gpt2", "all"], default="all")
    args = parser.parse_args(argv)
    if args.pretrain_steps < 1:
        parser.error("--pretrain-steps must be at least 1")

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    # --only data / --only model rebuild one half; keep the record of the other.
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["format_version"] = 1
    manifest["prompt_format"] = EXAMPLE_TEMPLATE
    manifest["prompt_only_format"] = PROMPT_TEMPLATE
    command = _command(args)

    # The datasets are cheap and the tokenizer is trained on them, so they are
    # always regenerated in memory; --only model just does not write them.
    qa = generate_qa(args.seed, N_QA)
    intents = generate_intents(args.seed, N_INTENTS)
    print(f"generated {len(qa)} QA records and {len(intents)} intent records (seed {args.seed})")

    if args.only in ("data", "all"):
        write_jsonl(out / QA_FILE, qa)
        write_jsonl(out / INTENTS_FILE, intents)
        manifest["datasets"] = {
            "command": command,
            "seed": args.seed,
            "qa_records": len(qa),
            "intent_records": len(intents),
            "n_intents": len(INTENTS),
            "intents": sorted(INTENTS),
        }

    if args.only in ("groups", "all"):
        # Its own random stream: building it changes no other file.
        grouped = generate_intents_groups(args.seed, N_GROUPS)
        write_jsonl(out / GROUPS_FILE, grouped)
        manifest["groups_dataset"] = {
            "command": command,
            "seed": args.seed,
            "records": len(grouped),
            "group_column": GROUP_COLUMN,
            "group_counts": {g: sum(r[GROUP_COLUMN] == g for r in grouped) for g in CUSTOMER_GROUPS},
        }

    if args.only in ("routing", "all"):
        routing = generate_routing(intents)
        write_jsonl(out / ROUTING_FILE, routing)
        manifest["routing_dataset"] = {
            "command": command,
            "records": len(routing),
            "reply": ROUTING_REPLY,
            "teams": {team: sum(ROUTING_REPLY.format(team=team) == r["messages"][1]["content"] for r in routing)
                      for team in TEAMS},
        }

    if args.only in ("model", "all"):
        import torch
        import transformers

        # Two threads is both the target machine and the budget the default
        # step count was tuned for; more threads would also change the float
        # summation order and thus the exact weights.
        torch.set_num_threads(2)
        pretrain_texts = generate_pretrain_texts(args.seed)
        # The tokenizer sees everything the model will ever be shown: the
        # pretraining docs plus the fine-tuning examples in their final format,
        # so "Question:"/"Answer:" and slot values tokenize compactly.
        tok_texts = pretrain_texts + [format_example(r["prompt"], r["response"]) for r in qa]
        tok_texts += [r["text"] for r in intents]
        tokenizer = build_tokenizer(tok_texts)
        print(f"tokenizer: {len(tokenizer)} tokens")

        model = build_model(tokenizer, args.seed)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {n_params:,} parameters; pretraining {args.pretrain_steps} steps on {len(pretrain_texts)} docs")
        seq_len, batch_size, lr = 64, 32, 3e-3
        losses = pretrain(
            model, tokenizer, pretrain_texts, args.pretrain_steps,
            batch_size=batch_size, seq_len=seq_len, lr=lr, seed=args.seed,
        )
        n_tokens = sum(len(x) + 1 for x in tokenizer(pretrain_texts)["input_ids"])

        model_dir = out / MODEL_DIR
        model_dir.mkdir(parents=True, exist_ok=True)
        for old in model_dir.iterdir():  # no stale files from an older layout
            if old.is_file():
                old.unlink()
        # transformers 5 always writes safetensors (safe_serialization is gone).
        model.save_pretrained(model_dir)
        _save_tokenizer(tokenizer, model_dir)

        fits = [
            len(tokenizer(format_example(r["prompt"], r["response"]))["input_ids"]) <= MAX_EXAMPLE_TOKENS for r in qa
        ]
        tail = losses[-10:]
        manifest["model"] = {
            "command": command,
            "seed": args.seed,
            "parameters": n_params,
            "vocab_size": len(tokenizer),
            "dtype": "float32",
            "pretrain": {
                "steps": args.pretrain_steps,
                "batch_size": batch_size,
                "seq_len": seq_len,
                "lr": lr,
                "documents": len(pretrain_texts),
                "tokens": n_tokens,
                "first_loss": round(losses[0], 4) if losses else None,
                "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
                "last_step_loss": round(losses[-1], 4) if losses else None,
            },
            "fit_in_64_tokens_pct": round(100.0 * sum(fits) / len(fits), 2),
            "checkpoint_bytes": sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file()),
            "build_wall_seconds": round(time.perf_counter() - t_start, 1),
            "host": {
                "cpu_threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        }

    if args.only in ("gpt2", "all"):
        manifest["gpt2_model"] = _build_gpt2(out, qa, intents, args.seed, command, t_start)

    write_provenance(out, manifest)
    print(f"wrote {out} in {time.perf_counter() - t_start:.1f}s")
    return manifest


if __name__ == "__main__":
    main(sys.argv[1:])
