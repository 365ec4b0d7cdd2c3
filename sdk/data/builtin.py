"""Built-in datasets that need no download: `builtin:news-topics[:train|:test]`, `builtin:news-preferences`,
`builtin:city-dates[:train|:test]`.

city-dates is an extraction task: a sentence about a trip or an event → `{"city": …, "date": …}` as JSON (the date
as YYYY-MM-DD, whatever way the sentence writes it). Its train and test splits share no city and no sentence
frame, so exact match on test rows measures the skill, not memory.

news-topics stands in for AG News (which cannot be downloaded here): short news-like texts in four
topics (World, Sports, Business, Sci/Tech). Train and test draw on DISJOINT entity lists and
DISJOINT sentence frames, so a model must learn the topic vocabulary, not memorise rows. Each text
is assembled from a frame, a topic event, an entity, a place and an optional topical tail, which
gives thousands of distinct phrasings from a fixed seed.
"""

from __future__ import annotations

import random

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
INSTRUCTION = "Classify this news text as World, Sports, Business or Sci/Tech."

# Per topic: events (what happened) and entities, each split into train / test halves.
_TOPICS: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "World": {
        "event": (
            ["signed a ceasefire agreement", "held emergency talks with neighbouring states", "expelled two diplomats",
             "called snap parliamentary elections", "deployed peacekeepers to the border", "opened a refugee corridor",
             "announced sanctions against the regime", "recalled its ambassador", "hosted a regional security summit",
             "declared a state of emergency", "released political prisoners", "closed its airspace to foreign jets"],
            ["agreed to a prisoner exchange", "condemned the military coup", "began evacuating its embassy",
             "voted to suspend the treaty", "accused rebels of shelling villages", "lifted the curfew in the capital",
             "brokered a truce between militias", "sent humanitarian aid convoys", "rejected the UN resolution",
             "arrested opposition leaders"],
        ),
        "entity": (
            ["the foreign ministry", "the prime minister", "rebel commanders", "the UN envoy", "the ruling junta",
             "the president's office", "NATO officials", "the parliament speaker", "border guards", "the defence minister"],
            ["the interior ministry", "the opposition coalition", "African Union mediators", "the chancellor",
             "the royal palace", "the security council", "EU foreign ministers", "the army chief"],
        ),
    },
    "Sports": {
        "event": (
            ["won the championship final", "scored twice in stoppage time", "signed a record transfer deal",
             "retired after a fifteen-year career", "set a new world record in the sprint", "was knocked out in the semifinal",
             "clinched the league title", "beat the defending champions", "was suspended for three matches",
             "named a new head coach", "won gold in the relay", "came back from two sets down"],
            ["lifted the trophy after a penalty shootout", "broke the course record", "qualified for the playoffs",
             "sacked its manager after a losing streak", "won the grand prix from pole position", "drew level in the series",
             "tore a knee ligament in training", "took the yellow jersey", "hit a century on debut", "won the marathon"],
        ),
        "entity": (
            ["the striker", "the home side", "the tennis star", "the veteran goalkeeper", "the national team",
             "the league leaders", "the young sprinter", "the club captain", "the visiting team", "the coach"],
            ["the point guard", "the cycling team", "the quarterback", "the relay squad", "the rookie pitcher",
             "the world number one", "the rugby fifteen", "the boxing champion"],
        ),
    },
    "Business": {
        "event": (
            ["reported a sharp rise in quarterly profit", "cut its earnings forecast", "agreed to buy a rival for $4 billion",
             "announced plans to lay off 2,000 workers", "saw its shares tumble 12 percent", "raised interest rates by half a point",
             "filed for bankruptcy protection", "beat analysts' revenue estimates", "launched a share buyback",
             "posted record annual sales", "named a new chief executive", "priced its initial public offering"],
            ["warned of slowing consumer demand", "merged with a regional lender", "reported a surprise quarterly loss",
             "raised its dividend", "was fined by the competition regulator", "doubled its market share",
             "sold its retail division", "issued new corporate bonds", "slashed prices to win customers",
             "agreed to a hostile takeover bid"],
        ),
        "entity": (
            ["the automaker", "the central bank", "the retail chain", "the oil producer", "the airline",
             "shareholders", "the investment bank", "the steel maker", "the insurer", "the supermarket group"],
            ["the brewery", "the mining company", "the hedge fund", "the shipping conglomerate", "the utility",
             "the pharmaceutical distributor", "the private equity firm", "the textile exporter"],
        ),
    },
    "Sci/Tech": {
        "event": (
            ["unveiled a faster smartphone chip", "launched a satellite into orbit", "released a major software update",
             "discovered a new species of deep-sea fish", "patched a critical security flaw", "announced a quantum computing milestone",
             "published a study on gene editing", "demonstrated a self-driving prototype", "open-sourced its language model",
             "detected water vapour on a distant planet", "built a battery that charges in minutes", "shut down its social network"],
            ["sequenced the genome of an ancient plant", "launched a reusable rocket", "found a bug in the encryption library",
             "released a new operating system", "mapped the brain of a fruit fly", "tested a fusion reactor magnet",
             "unveiled a virtual reality headset", "trained a robot to fold laundry", "observed a distant supernova",
             "developed a biodegradable plastic"],
        ),
        "entity": (
            ["the chipmaker", "astronomers", "the software company", "researchers", "the space agency",
             "engineers", "the search giant", "a team of biologists", "the startup", "computer scientists"],
            ["physicists", "the robotics lab", "the telescope team", "geneticists", "the cloud provider",
             "the browser maker", "climate scientists", "the drone manufacturer"],
        ),
    },
}

_PLACES = (
    ["in Geneva", "in Lagos", "in Jakarta", "on Monday", "late on Tuesday", "this week", "in Brussels", "in Santiago",
     "on Friday", "in Osaka", "overnight", "in Nairobi"],
    ["in Lisbon", "in Hanoi", "on Thursday", "earlier today", "in Montreal", "in Cairo", "at the weekend", "in Oslo"],
)

# Sentence frames: {e} entity, {v} event, {p} place/time. Train and test use different frames.
_FRAMES = (
    ["{E} {v} {p}.", "{P}, {e} {v}.", "Reports say {e} {v} {p}.", "{E} {v}, officials said {p}.",
     "Update: {e} {v} {p}.", "{E} unexpectedly {v} {p}.", "Sources confirmed that {e} {v} {p}.",
     "{P} {e} {v}, according to a statement.", "It emerged {p} that {e} {v}.", "Breaking: {e} {v}.",
     "{E} {v} {p}, surprising observers.", "Analysts noted that {e} {v} {p}."],
    ["{E} has {v} {p}, a spokesperson said.", "According to local media, {e} {v} {p}.",
     "{P}, in a widely watched move, {e} {v}.", "Witnesses said {e} {v} {p}.", "Headline: {e} {v}.",
     "{E} reportedly {v} {p}.", "In a statement {p}, {e} said it {v}.", "News just in: {e} {v} {p}."],
)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _part(dataset: str, split: str) -> int:
    """0 for the train split, 1 for test: each dataset's pools are split in two halves."""
    part = {"train": 0, "test": 1}.get(split)
    if part is None:
        raise ValueError(f"builtin:{dataset} has splits train and test, not {split!r}")
    return part


def news_topics(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Rows {instruction, input, output}; 'train' and 'test' share no entity, event, place or frame."""
    part = _part("news-topics", split)
    n = n or (2000 if part == 0 else 400)
    rng = random.Random(f"news-topics:{split}:{seed}")
    rows = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]  # balanced
        pools = _TOPICS[label]
        entity, event = rng.choice(pools["entity"][part]), rng.choice(pools["event"][part])
        place = rng.choice(_PLACES[part])
        frame = rng.choice(_FRAMES[part])
        text = frame.format(e=entity, E=_cap(entity), v=event, p=place, P=_cap(place))
        rows.append({"instruction": INSTRUCTION, "input": text, "output": label})
    rng.shuffle(rows)
    return rows


def news_preferences(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Preference pairs for DPO: the right topic is chosen, a wrong one rejected."""
    rows = []
    rng = random.Random(f"news-preferences:{split}:{seed}")
    for row in news_topics(split, n, seed):
        wrong = rng.choice([label for label in LABELS if label != row["output"]])
        rows.append({"instruction": row["instruction"], "input": row["input"], "chosen": row["output"], "rejected": wrong})
    return rows


EXTRACT_INSTRUCTION = 'Extract the city and the date as JSON: {"city": ..., "date": "YYYY-MM-DD"}.'
_CITIES = (["Paris", "Berlin", "Madrid", "Lisbon", "Vienna", "Prague", "Dublin", "Oslo", "Helsinki", "Warsaw", "Athens",
            "Budapest", "Zurich", "Brussels", "Copenhagen", "Stockholm", "Milan", "Munich", "Lyon", "Porto"],
           ["Rome", "Amsterdam", "Krakow", "Seville", "Geneva", "Bergen", "Tallinn", "Riga", "Vilnius", "Sofia"])
_CITY_FRAMES = ([
    "We are flying to {city} on {date}.", "The conference takes place in {city} on {date}.",
    "My sister moves to {city} on {date}.", "On {date} the orchestra plays in {city}.",
    "The train for {city} leaves on {date}.", "Our team meets the client in {city} on {date}.",
    "I booked a hotel in {city} for {date}.", "The marathon in {city} is set for {date}.",
], [
    "The museum in {city} reopens on {date}.", "On {date} we land in {city}.",
    "The wedding will be held in {city} on {date}.", "A new office opens in {city} on {date}.",
])
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
           "December"]


def city_dates(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Rows {instruction, input, output}: a sentence and its {"city", "date"} as JSON; splits share no city or frame."""
    import json

    part = _part("city-dates", split)
    n = n or (800 if part == 0 else 100)
    rng = random.Random(f"city-dates:{split}:{seed}")
    rows = []
    for _ in range(n):
        city, frame = rng.choice(_CITIES[part]), rng.choice(_CITY_FRAMES[part])
        year, month, day = rng.randint(2024, 2027), rng.randint(1, 12), rng.randint(1, 28)
        written = rng.choice([f"{_MONTHS[month - 1]} {day}, {year}", f"{day} {_MONTHS[month - 1]} {year}",
                              f"{year}-{month:02d}-{day:02d}"])
        rows.append({"instruction": EXTRACT_INSTRUCTION, "input": frame.format(city=city, date=written),
                     "output": json.dumps({"city": city, "date": f"{year}-{month:02d}-{day:02d}"})})
    return rows


BUILTINS = {"news-topics": news_topics, "news-preferences": news_preferences, "city-dates": city_dates}


def load_builtin(source: str) -> list[dict[str, str]]:
    """'builtin:news-topics' or 'builtin:news-topics:test'."""
    _, _, rest = source.partition(":")
    name, _, split = rest.partition(":")
    if name not in BUILTINS:
        raise ValueError(f"unknown builtin dataset {name!r}; known: {', '.join(BUILTINS)}")
    return BUILTINS[name](split or "train")


def corpus() -> list[str]:
    """Text for training a tiny tokenizer: every builtin phrase in the instruction template."""
    texts = [INSTRUCTION, "### Instruction:", "### Input:", "### Response:", *LABELS]
    for part in (0, 1):
        for pools in _TOPICS.values():
            texts += pools["entity"][part] + pools["event"][part]
        texts += _PLACES[part] + _FRAMES[part]
    return texts
