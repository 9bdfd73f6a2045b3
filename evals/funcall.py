"""`funcall`: JSON function calling (BFCL-like): pick the function and fill in its arguments.

Record: `{"prompt": "Available functions:\\n<one JSON schema per line>\\nUser: <request>\\nCall:",
"completion": " {\\"name\\": ..., \\"arguments\\": {...}}", "name": str, "arguments": str,
"functions": [str, ...]}`; `prompt + completion` is the training text. `arguments` is the
expected arguments as a JSON-encoded string (as in OpenAI tool calls), which keeps records of
different functions loadable as one Arrow table; `functions` names the 2-4 offered functions.
Every schema is in `FUNCTIONS` (`{"name", "description", "parameters": {"type": "object",
"properties": {...}, "required": [...]}}`); requests state every argument value literally.

Scoring (`score`): the first JSON object with a `"name"` key in the output (`extract_call`) must
name the expected function and carry arguments (`"arguments"` or `"parameters"`, a dict or a
JSON string of one) that equal the expected ones (`arguments_match`): order-insensitive,
type-aware (integer params need ints, number params ints or floats, booleans bools, strings
strings compared after trimming), no missing keys, and no extra keys except optional
parameters given their declared default.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from suntool.evals.common import CITIES, FEMALE_NAMES, MALE_NAMES, distinct, task_rng

NAME = "funcall"
STOP_STRINGS = ("\n\n", "\nUser:")


def _schema(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "INR", "CAD"]
UNITS = ["celsius", "fahrenheit"]
PRIORITIES = ["low", "medium", "high"]
ROOMS = ["living room", "bedroom", "kitchen", "office"]

FUNCTIONS: tuple[dict, ...] = (
    _schema(
        "get_weather", "Get the current weather in a city.",
        {"city": _STR, "unit": {"type": "string", "enum": UNITS, "default": "celsius"}}, ["city"],
    ),
    _schema(
        "set_alarm", "Set an alarm.",
        {"time": {"type": "string", "description": "24-hour HH:MM"}, "label": _STR}, ["time"],
    ),
    _schema("send_email", "Send an email.", {"to": _STR, "subject": _STR, "body": _STR}, ["to", "subject"]),
    _schema(
        "convert_currency", "Convert an amount of money between currencies.",
        {
            "amount": _NUM,
            "from_currency": {"type": "string", "enum": CURRENCIES},
            "to_currency": {"type": "string", "enum": CURRENCIES},
        },
        ["amount", "from_currency", "to_currency"],
    ),
    _schema(
        "book_table", "Reserve a table at a restaurant.",
        {"restaurant": _STR, "party_size": _INT, "time": {"type": "string", "description": "24-hour HH:MM"}},
        ["restaurant", "party_size", "time"],
    ),
    _schema(
        "search_flights", "Search for flights.",
        {
            "origin": _STR,
            "destination": _STR,
            "date": {"type": "string", "description": "YYYY-MM-DD"},
            "passengers": {"type": "integer", "default": 1},
        },
        ["origin", "destination", "date"],
    ),
    _schema(
        "play_song", "Play a song.",
        {"title": _STR, "artist": _STR, "shuffle": {"type": "boolean", "default": False}}, ["title"],
    ),
    _schema(
        "add_todo", "Add an item to the to-do list.",
        {"task": _STR, "priority": {"type": "string", "enum": PRIORITIES, "default": "medium"}}, ["task"],
    ),
    _schema("get_stock_price", "Get the latest price of a stock.", {"symbol": _STR}, ["symbol"]),
    _schema(
        "translate_text", "Translate text into another language.",
        {"text": _STR, "target_language": _STR}, ["text", "target_language"],
    ),
    _schema(
        "set_thermostat", "Set the target temperature of a room in degrees Celsius.",
        {"temperature": _INT, "room": {"type": "string", "enum": ROOMS}}, ["temperature", "room"],
    ),
    _schema(
        "create_event", "Add an event to the calendar.",
        {"title": _STR, "date": {"type": "string", "description": "YYYY-MM-DD"}, "duration_minutes": _INT},
        ["title", "date", "duration_minutes"],
    ),
    _schema(
        "calculate_tip", "Calculate the tip for a bill.",
        {"bill_amount": _NUM, "tip_percent": _INT}, ["bill_amount", "tip_percent"],
    ),
    _schema(
        "find_recipes", "Find recipes that use an ingredient.",
        {"ingredient": _STR, "max_minutes": _INT}, ["ingredient"],
    ),
    _schema("track_package", "Track a package.", {"tracking_id": _STR}, ["tracking_id"]),
    _schema(
        "order_taxi", "Order a taxi.",
        {"pickup": _STR, "destination": _STR, "passengers": {"type": "integer", "default": 1}},
        ["pickup", "destination"],
    ),
    _schema(
        "get_news", "Get the top news stories about a topic.",
        {"topic": _STR, "count": {"type": "integer", "default": 5}}, ["topic"],
    ),
    _schema(
        "set_reminder", "Remind the user of something after some minutes.",
        {"message": _STR, "minutes": _INT}, ["message", "minutes"],
    ),
)  # fmt: skip
FUNCTIONS_BY_NAME = {schema["name"]: schema for schema in FUNCTIONS}

# --------------------------------------------------------------------------- requests
# One function per schema: (request text, arguments), arguments in the schema's property order.

LANGUAGES = ("French", "Spanish", "German", "Japanese", "Italian", "Portuguese", "Korean")
PHRASES = (
    "good morning",
    "where is the station",
    "thank you very much",
    "see you tomorrow",
    "the bill, please",
)
SONGS = (("Blue Horizon", "The Lanterns"), ("Paper Moon", "Ada Vale"), ("Northern Lights", "Echo Park"),
         ("Slow River", "Mina Cole"), ("Golden Hour", "The Drifters"), ("City Rain", "Juno Ray"))  # fmt: skip
RESTAURANTS = ("Luigi's", "The Green Fork", "Sakura House", "Casa Lupe", "Blue Door Bistro", "Spice Garden")
TASKS = (
    "buy milk",
    "call the plumber",
    "renew passport",
    "water the plants",
    "pay rent",
    "book a dentist visit",
)
TOPICS = ("science", "sports", "technology", "climate", "music", "space")
INGREDIENTS = ("chicken", "tofu", "spinach", "mushrooms", "lentils", "salmon", "eggplant")
EVENTS = ("Team sync", "Dentist", "Project review", "Yoga class", "Book club", "Lunch with Sam")
SUBJECTS = ("Lunch on Friday", "Quarterly report", "Trip plans", "Meeting notes", "Birthday party")
REMINDERS = ("call mom", "take out the trash", "stretch", "check the oven", "join the meeting")
PLACES = ("the airport", "Central Station", "the museum", "Oak Street 12", "the harbor", "City Hall")
SYMBOLS = ("ACME", "GLOBX", "INITK", "UMBR", "STARK", "WAYNE", "HOOLI")


def _time(rng: random.Random) -> str:
    return f"{rng.randint(5, 22):02d}:{rng.choice((0, 15, 30, 45)):02d}"


def _date(rng: random.Random) -> str:
    return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _email(rng: random.Random) -> str:
    return f"{rng.choice(FEMALE_NAMES + MALE_NAMES).lower()}@example.com"


def _req_weather(rng):
    city = rng.choice(CITIES)
    if rng.random() < 0.5:
        return rng.choice((f"What's the weather like in {city}?", f"Is it raining in {city} right now?")), {
            "city": city
        }
    unit = rng.choice(UNITS)
    return rng.choice(
        (f"Tell me the temperature in {city} in {unit}.", f"How warm is {city} today, in {unit}?")
    ), {
        "city": city,
        "unit": unit,
    }


def _req_alarm(rng):
    time = _time(rng)
    if rng.random() < 0.5:
        return rng.choice((f"Set an alarm for {time}.", f"Wake me up at {time}.")), {"time": time}
    label = rng.choice(("gym", "meds", "school run", "standup", "bake bread"))
    return f"Set an alarm at {time} labeled '{label}'.", {"time": time, "label": label}


def _req_email(rng):
    to, subject = _email(rng), rng.choice(SUBJECTS)
    if rng.random() < 0.5:
        return f"Email {to} with the subject '{subject}'.", {"to": to, "subject": subject}
    body = rng.choice(("See you there.", "Please review by Monday.", "Running late, sorry.", "All done!"))
    return f"Send {to} an email titled '{subject}' saying '{body}'.", {
        "to": to,
        "subject": subject,
        "body": body,
    }


def _req_currency(rng):
    amount = rng.choice((rng.randint(5, 900), rng.randint(10, 500) + rng.choice((0.25, 0.5, 0.75))))
    src, dst = rng.sample(CURRENCIES, 2)
    text = rng.choice((f"Convert {amount} {src} to {dst}.", f"How much is {amount} {src} in {dst}?"))
    return text, {"amount": amount, "from_currency": src, "to_currency": dst}


def _req_table(rng):
    place, size, time = rng.choice(RESTAURANTS), rng.randint(1, 10), _time(rng)
    text = rng.choice(
        (f"Book a table for {size} at {place} at {time}.", f"Reserve {place} for {size} people at {time}.")
    )
    return text, {"restaurant": place, "party_size": size, "time": time}


def _req_flights(rng):
    origin, dest = rng.sample(CITIES, 2)
    date = _date(rng)
    if rng.random() < 0.5:
        return f"Find flights from {origin} to {dest} on {date}.", {
            "origin": origin,
            "destination": dest,
            "date": date,
        }
    n = rng.randint(2, 6)
    return f"Search flights {origin} to {dest} on {date} for {n} passengers.", {
        "origin": origin,
        "destination": dest,
        "date": date,
        "passengers": n,
    }


def _req_song(rng):
    title, artist = rng.choice(SONGS)
    shape = rng.randrange(3)
    if shape == 0:
        return f"Play '{title}'.", {"title": title}
    if shape == 1:
        return f"Play '{title}' by {artist}.", {"title": title, "artist": artist}
    return f"Play '{title}' by {artist} on shuffle.", {"title": title, "artist": artist, "shuffle": True}


def _req_todo(rng):
    task = rng.choice(TASKS)
    if rng.random() < 0.5:
        return f"Add '{task}' to my to-do list.", {"task": task}
    priority = rng.choice(("low", "high"))
    return f"Add '{task}' to my to-do list with {priority} priority.", {"task": task, "priority": priority}


def _req_stock(rng):
    symbol = rng.choice(SYMBOLS)
    return rng.choice((f"What's the stock price of {symbol}?", f"How is {symbol} trading?")), {
        "symbol": symbol
    }


def _req_translate(rng):
    text, lang = rng.choice(PHRASES), rng.choice(LANGUAGES)
    return f"Translate '{text}' into {lang}.", {"text": text, "target_language": lang}


def _req_thermostat(rng):
    temp, room = rng.randint(16, 26), rng.choice(ROOMS)
    text = rng.choice((f"Set the {room} to {temp} degrees.", f"Make the {room} {temp} degrees Celsius."))
    return text, {"temperature": temp, "room": room}


def _req_event(rng):
    title, date, minutes = rng.choice(EVENTS), _date(rng), rng.choice((15, 30, 45, 60, 90, 120))
    return f"Schedule '{title}' on {date} for {minutes} minutes.", {
        "title": title,
        "date": date,
        "duration_minutes": minutes,
    }


def _req_tip(rng):
    bill = rng.randint(8, 150) + rng.choice((0, 0.5, 0.25, 0.75))
    percent = rng.choice((10, 12, 15, 18, 20, 25))
    text = rng.choice(
        (f"What's a {percent}% tip on a ${bill} bill?", f"Calculate a {percent} percent tip for ${bill}.")
    )
    return text, {"bill_amount": bill, "tip_percent": percent}


def _req_recipes(rng):
    ingredient = rng.choice(INGREDIENTS)
    if rng.random() < 0.5:
        return f"Find me recipes with {ingredient}.", {"ingredient": ingredient}
    minutes = rng.choice((15, 20, 30, 45, 60))
    return f"Find recipes with {ingredient} that take at most {minutes} minutes.", {
        "ingredient": ingredient,
        "max_minutes": minutes,
    }


def _req_package(rng):
    tracking = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(10))
    return rng.choice((f"Where is my package {tracking}?", f"Track package {tracking}.")), {
        "tracking_id": tracking
    }


def _req_taxi(rng):
    pickup, dest = rng.sample(PLACES, 2)
    if rng.random() < 0.5:
        return f"Get me a taxi from {pickup} to {dest}.", {"pickup": pickup, "destination": dest}
    n = rng.randint(2, 5)
    return f"Order a taxi for {n} people from {pickup} to {dest}.", {
        "pickup": pickup,
        "destination": dest,
        "passengers": n,
    }


def _req_news(rng):
    topic = rng.choice(TOPICS)
    if rng.random() < 0.5:
        return f"What's new in {topic}?", {"topic": topic}
    n = rng.choice((1, 2, 3, 4, 10))
    return f"Give me the top {n} news stories about {topic}.", {"topic": topic, "count": n}


def _req_reminder(rng):
    message, minutes = rng.choice(REMINDERS), rng.choice((5, 10, 15, 20, 30, 45, 60, 90))
    return f"Remind me to {message} in {minutes} minutes.", {"message": message, "minutes": minutes}


REQUESTS: dict[str, Callable[[random.Random], tuple[str, dict]]] = {
    "get_weather": _req_weather, "set_alarm": _req_alarm, "send_email": _req_email,
    "convert_currency": _req_currency, "book_table": _req_table, "search_flights": _req_flights,
    "play_song": _req_song, "add_todo": _req_todo, "get_stock_price": _req_stock,
    "translate_text": _req_translate, "set_thermostat": _req_thermostat, "create_event": _req_event,
    "calculate_tip": _req_tip, "find_recipes": _req_recipes, "track_package": _req_package,
    "order_taxi": _req_taxi, "get_news": _req_news, "set_reminder": _req_reminder,
}  # fmt: skip


def _record(rng: random.Random) -> dict:
    target = rng.choice(FUNCTIONS)["name"]
    others = rng.sample([f["name"] for f in FUNCTIONS if f["name"] != target], rng.randint(1, 3))
    offered = [target, *others]
    rng.shuffle(offered)
    request, arguments = REQUESTS[target](rng)
    listing = "\n".join(json.dumps(FUNCTIONS_BY_NAME[name]) for name in offered)
    call = json.dumps({"name": target, "arguments": arguments})
    return {
        "prompt": f"Available functions:\n{listing}\nUser: {request}\nCall:",
        "completion": " " + call,
        "name": target,
        "arguments": json.dumps(arguments),
        "functions": offered,
    }


def generate(n: int, seed: int) -> list[dict]:
    """`n` distinct function-calling records, the same for the same seed."""
    return distinct(n, task_rng(NAME, seed), _record)


# --------------------------------------------------------------------------- scoring


def extract_call(output: str) -> dict | None:
    """The first JSON object in `output` that has a `"name"` key, or None."""
    decoder = json.JSONDecoder()
    start = output.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(output, start)
        except ValueError:
            value = None
        if isinstance(value, dict) and "name" in value:
            return value
        start = output.find("{", start + 1)
    return None


def _value_matches(got, want, spec: dict) -> bool:
    kind = spec.get("type")
    if kind == "integer":
        return isinstance(got, int) and not isinstance(got, bool) and got == want
    if kind == "number":
        return (
            isinstance(got, (int, float))
            and not isinstance(got, bool)
            and abs(got - want) <= 1e-9 * max(1, abs(want))
        )
    if kind == "boolean":
        return isinstance(got, bool) and got == want
    if kind == "string":
        return isinstance(got, str) and got.strip() == want.strip()
    if kind == "array":
        items = spec.get("items", {})
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_value_matches(g, w, items) for g, w in zip(got, want, strict=True))
        )
    return got == want


def arguments_match(got: dict, expected: dict, schema: dict) -> bool:
    """Type-aware, order-insensitive argument equality against `schema` (a `FUNCTIONS` entry)."""
    properties = schema["parameters"]["properties"]
    required = set(schema["parameters"].get("required", ()))
    for key, want in expected.items():
        if key not in got or not _value_matches(got[key], want, properties.get(key, {})):
            return False
    for key in got.keys() - expected.keys():
        spec = properties.get(key)
        if spec is None or key in required or "default" not in spec:
            return False
        if not _value_matches(got[key], spec["default"], spec):
            return False
    return True


def expected_arguments(record: dict) -> dict:
    """The record's expected arguments (stored as a JSON string; a dict is accepted too)."""
    arguments = record["arguments"]
    return json.loads(arguments) if isinstance(arguments, str) else dict(arguments)


def score(output: str, record: dict) -> float:
    """1.0 iff the first JSON call in `output` names the expected function with equal arguments."""
    call = extract_call(output)
    if call is None or call.get("name") != record["name"]:
        return 0.0
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return 0.0
    if not isinstance(arguments, dict):
        return 0.0
    schema = FUNCTIONS_BY_NAME[record["name"]]
    return 1.0 if arguments_match(arguments, expected_arguments(record), schema) else 0.0
