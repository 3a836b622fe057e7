"""The prompts every config has without naming them: digits, number words, the queue's words, tones, music.

A prompt of the same id in the config's ``ivr.prompts`` replaces a built-in
one; ``ivr/settings/prompts.py`` renders them (espeak-ng for the texts, code
for the tones and the hold music).
"""

from __future__ import annotations

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = {20: "twenty", 30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty", 90: "ninety"}

#: Built-in tones (not speech): id -> (frequency in Hz, seconds).
BUILTIN_TONES: dict[str, tuple[float, float]] = {"beep": (1000.0, 0.3)}


def builtin_prompt_texts() -> dict[str, str]:
    """Spoken built-in prompts (id -> English text) that need no config.

    Digits for ``say_digits`` (``digit_0``..``digit_9``, ``digit_star``,
    ``digit_hash``) and number words for ``say_number`` (``num_0``..``num_19``,
    ``num_20``..``num_90`` by tens, ``num_hundred``, ``num_thousand``). The
    ``beep`` tone is in :data:`BUILTIN_TONES`.
    """
    texts = {f"digit_{d}": _ONES[d] for d in range(10)}
    texts["digit_star"] = "star"
    texts["digit_hash"] = "hash"
    texts.update({f"num_{n}": _ONES[n] for n in range(20)})
    texts.update({f"num_{n}": word for n, word in _TENS.items()})
    texts["num_hundred"] = "hundred"
    texts["num_thousand"] = "thousand"
    texts.update(QUEUE_PROMPT_TEXTS)
    return texts


#: What callers waiting in a queue hear (docs/queueing.md); a prompt of the same id in the config replaces one.
QUEUE_PROMPT_TEXTS: dict[str, str] = {
    "queue_position": "You are number",
    "queue_in_line": "in the queue.",
    "queue_wait": "Your estimated waiting time is",
    "queue_minutes": "minutes.",
    "queue_wait_under_a_minute": "Your estimated waiting time is less than one minute.",
    "queue_wait_unknown": "All our agents are busy at the moment. Please stay on the line.",
    "queue_busy_notice": "Our lines are very busy right now. We will answer you as soon as we can.",
    "callback_booked": "Your callback is booked.",
    "callback_within": "We will call you back within",
    "callback_hours": "hours.",
    "callback_exists": "You already have a callback booked with us.",
    "callback_cancelled": "Your callback is cancelled.",
    "callback_none": "You have no callback booked with us.",
    "callback_failed": "Sorry, we could not book your callback just now. Please try again later.",
    "queue_peak_shaving": (
        "We are receiving a very large number of calls right now, and we cannot tell you when an agent "
        "will be free. To save you waiting, please call again later, or use our self-service channels "
        "on the web, in the app, or by text message."
    ),
}


#: Built-in music made in code (ivr/settings/prompts.py).
BUILTIN_MUSIC: frozenset[str] = frozenset({"hold_music"})

BUILTIN_PROMPTS: frozenset[str] = frozenset(builtin_prompt_texts()) | frozenset(BUILTIN_TONES) | BUILTIN_MUSIC
