"""The reuse decision: may the audio made for a cached prompt serve a new prompt?

Finding candidates and judging them are separate steps (as in GPTCache): the vector search
returns cached prompts whose embedding cosine with the new prompt is at least
``tau_semantic``; :class:`ReuseJudge` then decides, for one candidate at a time, whether
its audio may be served. The judge is pure (no I/O, no model, no state): it combines the
cosine with lexical and structural signals read off the two prompts:

* **content alignment** - each prompt is cut into content words, reduced to a stem and, via
  a small hand-written lexicon, to a concept (``fridge`` and ``refrigerator`` are one
  concept); words are aligned across the prompts and each unaligned word gets a role:
  sound source (noun), sound event (verb or sound noun), modifier, place/time context,
  filler;
* **conflicts** (a reason to refuse) - a different sound source on each side (``a bear
  growling`` / ``a dog growling``), a different event for the same source (``a music box
  playing`` / ``a music box being wound up``), opposite modifiers (loud/quiet, fast/slow,
  high/low, distant/close, big/small ...), man/woman, one/many, different counts, a
  negation on one side only, the same events in another order;
* **penalties** - words on one side only (an extra source, an extra event, context) lower
  the score; a prompt pair whose content is fully aligned gets a bonus.

The combined score is ``cosine + bonus - penalties``; a candidate is accepted when it has no
conflict, its cosine is at least ``tau_semantic`` and its score at least ``tau_reuse``.
Everything is symmetric in the two prompts. :data:`DEFAULT_THRESHOLDS` were calibrated on
labelled prompt pairs for precision first (see docs/cache.md).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import lru_cache
from itertools import pairwise

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PairSignals",
    "PromptAnalysis",
    "ReuseDecision",
    "ReuseJudge",
    "ReuseThresholds",
    "Role",
    "ScoreWeights",
    "analyse_prompt",
    "compare_prompts",
    "normalise_prompt",
]

# --------------------------------------------------------------------------------------
# Normalisation (also the exact-match cache key: keep it simple and stable)
# --------------------------------------------------------------------------------------

_WS = re.compile(r"\s+")
_TRAILING_PUNCT = ".,;:!?…。、"


def normalise_prompt(prompt: str) -> str:
    """Unicode NFKC, lowercase, whitespace collapsed, trailing punctuation stripped."""
    text = unicodedata.normalize("NFKC", prompt).lower()
    text = _WS.sub(" ", text).strip()
    return text.rstrip(_TRAILING_PUNCT + " ").strip()


# --------------------------------------------------------------------------------------
# Stemming
# --------------------------------------------------------------------------------------

_IRREGULAR_NOUNS = {
    "geese": "goose", "mice": "mouse", "children": "child", "kids": "child", "kid": "child",
    "men": "man", "women": "woman", "people": "person", "feet": "foot", "teeth": "tooth",
    "leaves": "leaf", "wolves": "wolf", "knives": "knife", "calves": "calf", "hooves": "hoof",
    "halves": "half", "shelves": "shelf", "oxen": "ox", "lice": "louse", "dice": "die",
    "thieves": "thief", "loaves": "loaf", "scarves": "scarf", "wives": "wife",
    "lives": "life", "data": "datum", "cacti": "cactus", "fungi": "fungus",
    "song": "sing", "songs": "sing", "speech": "speak", "laughter": "laugh",
    "breath": "breathe", "breaths": "breathe", "bluesy": "blues",
    "heavily": "heavy", "noisily": "noisy", "busily": "busy", "angrily": "angry",
    "happily": "happy", "steadily": "steady", "lazily": "lazy", "easily": "easy",
    "gently": "gentle", "loudly": "loud", "softly": "soft", "quickly": "quick",
    "slowly": "slow", "rapidly": "rapid", "quietly": "quiet", "faintly": "faint",
    "calmly": "calm", "badly": "bad",
}

# Irregular verb forms: they are events even without an -ing / -ed ending.
_IRREGULAR_VERBS = {
    "wound": "wind", "torn": "tear", "tore": "tear", "shaken": "shake", "shook": "shake",
    "blown": "blow", "blew": "blow", "thrown": "throw", "threw": "throw", "broken": "break",
    "broke": "break", "struck": "strike", "rang": "ring", "rung": "ring", "sang": "sing",
    "sung": "sing", "flew": "fly", "flown": "fly", "ran": "run", "fell": "fall",
    "fallen": "fall", "swung": "swing", "spun": "spin", "drove": "drive", "driven": "drive",
    "spoke": "speak", "spoken": "speak", "froze": "freeze", "frozen": "freeze",
    "bitten": "bite", "beaten": "beat", "began": "begin", "begun": "begin", "woke": "wake",
    "ridden": "ride", "rode": "ride", "rose": "rise", "risen": "rise", "sprang": "spring",
    "stung": "sting", "sprung": "spring", "shot": "shoot", "hung": "hang", "dug": "dig",
    "slid": "slide", "slammed": "slam", "went": "go", "gone": "go", "made": "make",
    "ate": "eat", "eaten": "eat", "drank": "drink", "drunk": "drink", "sank": "sink",
    "sunk": "sink", "swam": "swim", "stuck": "stick", "led": "lead", "fed": "feed",
    "cried": "cry", "cries": "cry", "flies": "fly", "dried": "dry", "fried": "fry",
    "tried": "try", "died": "die", "lying": "lie", "dying": "die", "tying": "tie",
    "shut": "shut", "hit": "hit", "cut": "cut", "split": "split", "burst": "burst",
    "dropped": "drop", "thrust": "thrust", "quit": "quit", "spat": "spit",
}

_IRREGULAR = {**_IRREGULAR_NOUNS, **_IRREGULAR_VERBS}

# Words ending in -ed / -ing / -s that are not inflections.
_NO_STRIP = frozenset(
    "speed bleed breed feed need seed weed reed shed bed sled red hundred sacred naked "
    "wicked rugged ragged jagged kindred bred "
    "thing string spring wing ring king sing sting swing bring cling sling fling "
    "ceiling morning evening building pudding nothing something everything anything "
    "bus gas glass grass class brass bass boss moss kiss hiss mass pass press dress "
    "chess cross loss toss mess less fuss buzz jazz fizz whizz "
    "this was is has his its us plus thus yes news lens chaos bias atlas canvas "
    "series species cactus octopus hippopotamus platypus walrus circus chorus "
    "bonus virus status census focus fungus campus lotus iris tennis pelvis axis "
    "blues glasses scissors pants trousers binoculars tongs pliers".split()
)

_VOWELS = set("aeiou")


def _strip_final_e(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("e") and not word.endswith("ee") else word


def _undouble(word: str) -> str:
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in _VOWELS | {"l", "s", "z", "f"}:
        return word[:-1]
    return word


def stem(word: str) -> str:
    """A deliberately small stemmer: inflections and a few derivations, consistently."""
    w = _IRREGULAR.get(word, word)
    if w in _NO_STRIP:
        return w
    if w.endswith("ily") and len(w) >= 6:
        w = w[:-3] + "y"
    elif w.endswith("ly") and len(w) >= 6 and not w.endswith("ply"):
        w = w[:-2]
    if w.endswith("ing") and len(w) >= 6:
        w = _undouble(w[:-3])
    elif w.endswith("ied") and len(w) >= 5:
        w = w[:-3] + "y"
    elif w.endswith("ed") and len(w) >= 5 and not w.endswith("eed"):
        w = _undouble(w[:-2])
    elif w.endswith("ies") and len(w) >= 5:
        w = w[:-3] + "y"
    elif w.endswith(("ches", "shes", "sses", "xes", "zzes")) and len(w) >= 5:
        w = w[:-2]
    elif w.endswith("s") and len(w) >= 4 and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if w.endswith("y") and len(w) >= 5 and w[-2] not in _VOWELS and w[-2] == w[-3]:
        w = w[:-2]  # sunny -> sun, foggy -> fog
    elif w.endswith("y") and len(w) >= 5 and w[-2] not in _VOWELS:
        w = w[:-1]  # rainy -> rain, crunchy -> crunch, windy -> wind
    return _strip_final_e(w)


# --------------------------------------------------------------------------------------
# Lexicon: word classes and concepts. General vocabulary of sound descriptions, written
# by hand; it is not a list of the calibration prompts.
# --------------------------------------------------------------------------------------


class Role(StrEnum):
    """What an unaligned content word contributes to the sound asked for."""

    SOURCE = "source"  # a thing that makes the sound (noun)
    SPECIFIER = "specifier"  # a noun that says which kind of source ("ceiling" fan)
    PART = "part"  # a part, medium or implement of the source (hooves, water, spoon)
    EVENT = "event"  # a specific action or sound (verb, or a sound noun)
    GENERIC = "generic"  # a generic activity: playing, running, operating ...
    MOTION = "motion"  # passing, flying by, approaching ...
    MODIFIER = "modifier"  # adjective / adverb
    CONTEXT = "context"  # place, time, setting
    FILLER = "filler"  # carries nothing


def _stems(text: str) -> frozenset[str]:
    return frozenset(stem(w) for w in text.split())


_STOPWORDS = frozenset(
    "a an the of on in at to from into onto with by for and or nor but its it itself "
    "their theirs his her hers him them they he she we you i me my our your this that these "
    "those there here which who whom whose what when where while as is are was were be been "
    "being am do does did has have had having will would can could may might shall should "
    "must up out off down away back forth around about near through throughout along across "
    "under underneath beneath above below between among amongst against toward towards via "
    "upon within so than too very just also still even again only really quite rather "
    "somewhat slightly sometimes suddenly during until over past like such each others "
    "every all both either neither own same other another more most less least much few "
    "lot lots bunch kind sort type bit piece way something anything s".split()
)

# Words that say "a sound" and nothing about which.
_FILLERS = _stems(
    "sound sounds noise noises audio recording recorded clip sample effect effects "
    "ambience ambient ambiance atmosphere soundscape tone tones unit thing things stuff "
    "object objects item items various several different occur occurs occurring occurred "
    "happen happens happening heard hear hearing audible together"
)

# Generic activities: the source doing what it normally does. Compatible with a noun that
# names its sound ("a fan spinning" / "the whir of a fan").
_GENERIC = _stems(
    "play playing run running operate operating operation work working go going "
    "spin spinning function functioning use using make making produce producing emit "
    "emitting perform performing practice practicing practise practising call calling "
    "vocalize vocalizing vocalise vocalising connect connecting idle idling fall falling "
    "flow flowing blow blowing"
)

# Motion of the source relative to the listener.
_MOTION = _stems(
    "pass passing fly flying drive driving travel travelling traveling move moving "
    "approach approaching cruise cruising overhead by"
)

# Sound words: onomatopoeia and words that name a sound. Without an -ing / -ed ending they
# are sound nouns ("a crash", "the hum of"), not sources.
_SOUND_WORDS = _stems(
    "bang beep blare blast bleat bleep blip boom bong bray buzz cackle caw chatter chime "
    "chirp chirrup chitter chug clack clang clank clap clatter click clink cluck coo cough "
    "crack crackle crash creak croak crow crunch cry ding drip drone fizz flutter gasp "
    "giggle gobble growl grunt gurgle hiccup hiss honk hoot howl hum jingle knock laugh "
    "meow miaow moan moo neigh oink pant patter peep ping pop purr quack rattle ring roar "
    "rumble rustle scream screech shout shriek sigh sizzle slam slurp snap snarl sneeze "
    "snore snort sob splash splat sputter squawk squeak squeal squelch swish swoosh thud "
    "thump thunder tick toot trill tweet twang wail warble whimper whine whinny whir whirr "
    "whisper whistle whoop whoosh woof yap yelp yell yodel zap zoom note tune melody music "
    "chord rhythm beat roll fanfare crescendo applause cheer chant scream speech talk "
    "babble murmur mutter sing gulp clapping tap sniff sniffle burp wheeze choke groan "
    "scrape scratch crinkle crumple rip tear thwack whack smack slap stomp footstep "
    "static broadcast announcement news lecture conversation chatter song reel waltz "
    "takeoff liftoff launch explosion gunshot gunfire ringtone alarm siren jazz opera "
    "hymn lullaby anthem ballad symphony concerto sonata scale scales arpeggio"
)

# Parts, media and implements: they go with a source rather than make a new sound.
_PARTS = _stems(
    "hoof paw wing feather foot feet hand finger string sheet page log blade wheel tire "
    "leg tail beak boot shoe heel drop droplet water air liquid steam spoon fork knife "
    "plate cup bowl mug bottle straw pen pencil lid handle key voice voices"
)

# Synonym groups (first word names the group). A word may be in several groups; two words
# align when they share one. Only words that are interchangeable for reusing a sound.
_SYNONYMS: tuple[str, ...] = (
    # people
    "person someone somebody human individual people",
    "child kid youngster children",
    "baby infant newborn toddler",
    "man male gentleman guy",
    "woman female lady",
    "boy lad",
    "crowd audience spectators",
    # animals
    "dog doggy hound canine",
    "puppy pup",
    "cat kitty feline",
    "horse stallion mare steed",
    "cow cattle",
    "pig hog swine",
    "chicken hen",
    "rooster cockerel cock",
    "insect bug",
    "frog toad",
    # things
    "refrigerator fridge freezer",
    "faucet tap spigot",
    "phone telephone cellphone smartphone mobile",
    "television tv",
    "film movie",
    "car automobile",
    "motorcycle motorbike",
    "bicycle bike",
    "airplane aeroplane plane aircraft airliner",
    "helicopter chopper",
    "indicator blinker",
    "toilet loo",
    "vacuum hoover",
    "violin fiddle",
    "bathtub tub bath",
    "stove cooktop hob",
    "table tabletop",
    "road street track lane roadway",
    "jungle rainforest",
    "forest wood woods woodland",
    "ocean sea",
    "church cathedral chapel",
    "roof rooftop",
    "school schoolyard playground",
    "leaf foliage",
    "rock stone pebble",
    "night nighttime dark darkness midnight",
    "rain rainfall raindrop",
    "stream brook creek",
    "clock watch",
    "gun firearm",
    "heat hot",
    # events
    "launch liftoff takeoff",
    "laugh cackle chuckle giggle",
    "breathe pant puff",
    "hum buzz drone whir whirr",
    "vibrate buzz",
    "ring chime",
    "shout yell holler",
    "scream shriek",
    "talk speak chat converse conversation",
    "tune melody",
    "sing song",
    "clap applause applaud clapping",
    "bark woof",
    "meow miaow",
    "swallow gulp",
    "crumple crinkle",
    "honk toot",
    "squeak squeal",
    "click clack",
    "sizzle fry",
    "fire shoot gunshot gunfire",
    "explode explosion blast",
    "hit strike",
    "knock rap",
    "walk footstep",
    "pass fly drive travel move approach cruise overhead by",
    "static hiss",
)

# Phrases that are one concept; applied to the text before it is split into words.
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"\bturn signals?\b", "indicator"),
    (r"\blift(?:s|ing|ed)? off\b", "liftoff"),
    (r"\btak(?:e|es|ing) off\b", "takeoff"),
    (r"\btook off\b", "takeoff"),
    (r"\bblast(?:s|ing|ed)? off\b", "liftoff"),
    (r"\bair condition(?:er|ers|ing)\b", "aircon"),
    (r"\bin (?:the )?distance\b", "distant"),
    (r"\bfar away\b", "distant"),
    (r"\bfull blast\b", "loud"),
    (r"\bclose up\b", "close"),
    (r"\b(?:cell|mobile) phones?\b", "phone"),
    (r"\bin step\b", " "),
    (r"\bunder (?:foot|feet)\b", "underfoot"),
    (r"\bback and forth\b", " "),
    (r"[,;]", " ^sep "),
    (r"\balong with\b", " ^sep "),
    (r"\baccompanied by\b", " ^sep "),
    (r"\bover (?=(?:a|an|the|some|loud|soft|low|quiet|distant|background)\b)", " ^sep "),
    (r"\bfollowed by\b", " ^seq "),
    (r"\band then\b", " ^seq "),
    (r"\bafterwards?\b", " ^seq "),
    (r"\bthen\b", " ^seq "),
    (r"\bbefore\b", " ^seq "),
    (r"\bafter\b", " ^qes "),
)

# Place / time / setting words: they shade the sound, they do not make it.
_CONTEXT = _stems(
    "jungle forest woods field meadow garden yard backyard park street road highway "
    "city town village farm barn stable farmyard countryside school church stadium "
    "arena hall room kitchen bathroom bedroom office factory warehouse station airport "
    "harbor harbour port beach shore coast ocean sea lake pond swamp marsh cave tunnel "
    "valley mountain hill desert studio home house building outside inside outdoors "
    "indoors night morning afternoon evening day daytime dawn dusk noon summer winter "
    "autumn weather surface floor ground table desk shelf counter stove sink "
    "window wall corner distance background underwater underground underfoot heat sky "
    "space "
    "environment area place scene world setting"
)

# Adjectives and adverbs (as written; -ing / -ed forms listed here are adjectives).
_MODIFIER_WORDS = frozenset(
    (
        "loud quiet soft faint gentle light heavy hard strong weak low high deep shrill "
        "sharp dull muffled distant far close nearby near long short brief quick fast slow "
        "rapid steady constant continuous intermittent repeated repetitive rhythmic "
        "sustained sudden old new vintage antique modern ancient small little big large "
        "huge tiny giant massive enormous young adult elderly metal metallic wooden plastic "
        "electric electronic mechanical acoustic digital analog wet dry hot cold warm cool "
        "crunchy crispy busy crowded empty calm peaceful angry happy sad excited frantic "
        "alarmed single lone solo one multiple many numerous echoing reverberant distorted "
        "clear crisp smooth rough harsh mellow bright dark noisy silent thick thin clean "
        "dirty full bluesy lively cheerful eerie spooky creepy scary dramatic epic tinny "
        "hollow low-pitched high-pitched intense powerful violent fierce mild subtle hushed "
        "muted booming blaring thunderous torrential raging squeaky piercing deafening "
        "asleep awake furious aggressive playful delicate icy frozen freezing damp soaked "
        "soggy indoor outdoor leisurely sluggish speedy hurried brisk faraway remote "
        "closeup miniature individual bassy treble loudly quietly softly gently heavily "
        "calmly slowly quickly rapidly badly faintly steadily briefly continuously constantly "
        "repeatedly occasionally intermittently periodically endlessly endless nonstop "
        "incessant momentary"
    ).split()
)

# Scales with two poles: a word from each pole, one on each side, is a conflict.
_SCALES: tuple[tuple[str, str, str], ...] = (
    (
        "intensity",
        "loud noisy booming blaring thunderous deafening heavy hard strong intense powerful "
        "violent fierce forceful vigorous torrential raging",
        "quiet soft faint gentle light calm weak mild subtle hushed muted silent peaceful "
        "delicate asleep",
    ),
    ("speed", "fast quick rapid speedy hurried frantic brisk", "slow leisurely sluggish"),
    ("pitch", "high shrill squeaky piercing treble high-pitched", "low deep bassy low-pitched"),
    ("distance", "distant far faraway remote", "close nearby near closeup"),
    ("size", "big large huge giant massive enormous", "small little tiny miniature"),
    ("gender", "man boy", "woman girl"),
    ("age", "adult man woman elderly", "child baby boy girl young"),
    (
        "count",
        "single lone solo individual one",
        "many several multiple numerous crowd group flock herd swarm pack choir chorus "
        "orchestra band",
    ),
    ("wetness", "wet damp soaked soggy rainy", "dry"),
    (
        "duration",
        "continuous continuously constant constantly repeated repeatedly repetitive endless "
        "endlessly nonstop incessant sustained",
        "brief briefly short momentary once quick",
    ),
    ("setting", "indoor indoors inside", "outdoor outdoors outside"),
    ("temperature", "hot warm heat", "cold cool icy frozen freezing"),
    ("mood", "angry furious aggressive", "happy cheerful playful"),
)

_MANY = frozenset("many several multiple numerous lots".split())
_NEGATIONS = frozenset("no not without never none nothing nobody silence".split())

_NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "dozen": 12,
    "hundred": 100, "thousand": 1000, "twice": 2, "thrice": 3, "pair": 2, "couple": 2,
    "double": 2, "triple": 3, "once": 1,
}


def _build_groups() -> dict[str, frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for group in _SYNONYMS:
        words = group.split()
        head = stem(words[0])
        for w in words:
            groups.setdefault(stem(w), {stem(w)}).add(head)
    return {k: frozenset(v) for k, v in groups.items()}


_GROUPS = _build_groups()


def _groups(st: str) -> frozenset[str]:
    return _GROUPS.get(st, frozenset((st,)))


def _build_scales() -> dict[str, tuple[str, int]]:
    poles: dict[str, tuple[str, int]] = {}
    for name, high, low in _SCALES:
        for pole, words in ((1, high), (-1, low)):
            for w in words.split():
                poles.setdefault(stem(w), (name, pole))
    return poles


_SCALE_OF = _build_scales()
_MODIFIERS = frozenset(stem(w) for w in _MODIFIER_WORDS)
_PEOPLE = _stems("man woman boy girl child baby person crowd people audience")
_PERSON = stem("person")
_SOUND_GROUPS = frozenset(g for w in _SOUND_WORDS for g in _groups(w))
_IRREGULAR_VERB_FORMS = frozenset(_IRREGULAR_VERBS) - {"song", "songs"}
_ADJ_SUFFIXES = ("ful", "ous", "ic", "ical", "ive", "less", "ish", "able", "ible")
_TOKEN = re.compile(r"\^seq|\^qes|\^sep|[a-z0-9]+(?:[-'][a-z0-9]+)*")
_SEPARATORS = frozenset("^sep and while whilst as with plus".split())
_KNOWN = (
    _FILLERS | _GENERIC | _MOTION | _SOUND_WORDS | _CONTEXT | _MODIFIERS | _PARTS
    | frozenset(_GROUPS)
)


# --------------------------------------------------------------------------------------
# Analysis of one prompt
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """One content word of a prompt."""

    text: str
    stem: str
    groups: frozenset[str]
    role: Role
    nominal: bool  # an event word used as a noun ("the whir of", "a crash", "tinkling tune")
    plural: bool
    clause: int  # index of the clause in a sequence ("X followed by Y")
    segment: int  # index of the part between separators ("X and Y", "X while Y", ",")

    def aligns_with(self, other: Word) -> bool:
        return self.stem == other.stem or bool(self.groups & other.groups)


@dataclass(frozen=True)
class PromptAnalysis:
    """What :func:`analyse_prompt` reads off one prompt."""

    normalised: str
    words: tuple[Word, ...]
    negated: bool
    numbers: frozenset[int]
    clauses: int
    reversed_order: bool = False


def _split_words(text: str) -> list[str]:
    for pattern, repl in _PHRASES:
        text = re.sub(pattern, f" {repl} ", text)
    out: list[str] = []
    for tok in _TOKEN.findall(text):
        if tok.endswith("'s"):
            tok = tok[:-2]
        elif tok.endswith("s'"):
            tok = tok[:-1]
        if tok.endswith("n't"):
            out.extend([tok[:-3], "not"])
            continue
        if "-" in tok and tok not in _MODIFIER_WORDS:
            out.extend(p for p in tok.split("-") if p)
            continue
        out.append(tok.replace("'", ""))
    return out


def _is_verb_form(raw: str) -> bool:
    if raw in _IRREGULAR_VERB_FORMS:
        return True
    if raw in _NO_STRIP:
        return False
    return (raw.endswith("ing") and len(raw) > 5) or (
        raw.endswith("ed") and len(raw) > 4 and not raw.endswith("eed")
    )


def _role(raw: str, st: str, following: str | None) -> tuple[Role, bool]:
    """Role of a content word, and whether an event word is used as a noun."""
    groups = _groups(st)
    if st in _FILLERS:
        return Role.FILLER, False
    if st in _GENERIC:
        return Role.GENERIC, False
    if st in _MOTION:
        return Role.MOTION, False
    if _is_verb_form(raw):
        if raw in _MODIFIER_WORDS:
            return Role.MODIFIER, False
        # "-ing" right before a noun, or "the X-ing of", names the sound as a noun.
        return Role.EVENT, following in {"of", "noun"}
    if st in _PEOPLE:
        return Role.SOURCE, False
    if raw in _MODIFIER_WORDS and st in _SCALE_OF:
        return Role.MODIFIER, False
    if st in _SOUND_WORDS or groups & _SOUND_GROUPS:
        return Role.EVENT, True
    if st in _CONTEXT:
        return Role.CONTEXT, False
    if st in _PARTS:
        return Role.PART, False
    if raw in _MODIFIER_WORDS or st in _MODIFIERS or raw.endswith(_ADJ_SUFFIXES):
        return Role.MODIFIER, False
    if raw.endswith("ly") and len(raw) > 4:
        return Role.MODIFIER, False
    return Role.SOURCE, False


@lru_cache(maxsize=4096)
def analyse_prompt(prompt: str) -> PromptAnalysis:
    """Split a prompt into content words with stems, synonym groups and roles (cached)."""
    norm = normalise_prompt(prompt)
    raw_words = _split_words(norm)
    negated = any(w in _NEGATIONS for w in raw_words)
    numbers: set[int] = set()
    clause = segment = 0
    reversed_order = False
    kept: list[tuple[str, str, int, int]] = []  # (raw, stem or "" if a stopword, clause, segment)
    for raw in raw_words:
        if raw == "^seq":
            clause += 1
            segment += 1
        elif raw == "^qes":
            clause += 1
            segment += 1
            reversed_order = True
        elif raw in _SEPARATORS:
            segment += 1
            kept.append((raw, "", clause, segment))
        elif raw.isdigit():
            numbers.add(int(raw))
        elif raw in _NUMBER_WORDS:
            numbers.add(_NUMBER_WORDS[raw])
        elif raw in _STOPWORDS or raw in _NEGATIONS:
            kept.append((raw, "", clause, segment))
        else:
            kept.append((raw, stem(raw), clause, segment))
    words: list[Word] = []
    for i, (raw, st, cl, seg) in enumerate(kept):
        if not st:
            continue
        nxt = kept[i + 1] if i + 1 < len(kept) else None
        following: str | None = None
        if nxt is not None:
            if nxt[0] == "of":
                following = "of"
            elif (
                nxt[1]
                and nxt[1] not in _MODIFIERS
                and nxt[1] not in _MOTION
                and nxt[1] not in _GENERIC
                and not _is_verb_form(nxt[0])
            ):
                following = "noun"
            else:
                following = nxt[0]
        role, nominal = _role(raw, st, following)
        plural = raw != st and raw.endswith("s") and not raw.endswith("ss")
        words.append(Word(raw, st, _groups(st), role, nominal, plural, cl, seg))
    words = _second_pass(words, kept)
    return PromptAnalysis(
        normalised=norm,
        words=tuple(words),
        negated=negated,
        numbers=frozenset(numbers),
        clauses=clause + 1,
        reversed_order=reversed_order,
    )


def _second_pass(words: list[Word], kept: list[tuple[str, str, int, int]]) -> list[Word]:
    """Roles that depend on the next word: noun compounds and subjects."""
    out = list(words)
    for i, w in enumerate(out[:-1]):
        nxt = out[i + 1]
        adjacent = _adjacent(kept, w.text, nxt.text)
        if not adjacent:
            continue
        # Subject and present-tense verb: "a man speaks", "birds chirp", "a car accelerates".
        after = out[i + 2] if i + 2 < len(out) else None
        if (
            w.role in (Role.SOURCE, Role.PART)
            and _present_tense(w, nxt)
            and not (after is not None and _is_verb_form(after.text))
        ):
            out[i + 1] = replace(nxt, role=Role.EVENT, nominal=False, plural=False)
            continue
        # A sound noun that is the subject of an event is a source: "a drone buzzing".
        if w.role is Role.EVENT and w.nominal and nxt.role is Role.EVENT and not nxt.nominal:
            out[i] = _with_role(w, Role.SOURCE)
        # A noun right before a source noun says which kind: "ceiling fan", "tea kettle".
        elif (
            w.role in (Role.SOURCE, Role.CONTEXT, Role.PART)
            and nxt.role is Role.SOURCE
            and w.stem not in _PEOPLE
        ):
            out[i] = _with_role(w, Role.SPECIFIER)
    return out


def _present_tense(subject: Word, verb: Word) -> bool:
    """Whether ``verb`` reads as a present-tense verb of ``subject`` (number agreement)."""
    if verb.role not in (Role.SOURCE, Role.EVENT) or _is_verb_form(verb.text):
        return False
    if verb.role is Role.EVENT and not verb.nominal:
        return False
    third_person = verb.text.endswith("s") and not verb.text.endswith("ss") and verb.plural
    if subject.plural or subject.text in _PLURAL_SUBJECTS:
        return verb.role is Role.EVENT and not verb.text.endswith("s")
    if not third_person:
        return False
    # "a man speaks" / "a dog barks": a sound word, or a word we do not know as a noun.
    return verb.role is Role.EVENT or verb.stem not in _KNOWN


_PLURAL_SUBJECTS = frozenset(
    "people men women children kids geese mice feet teeth police cattle sheep deer".split()
)


def _adjacent(kept: list[tuple[str, str, int, int]], first: str, second: str) -> bool:
    return any(
        kept[j][0] == first and kept[j + 1][0] == second for j in range(len(kept) - 1)
    )


def _with_role(w: Word, role: Role) -> Word:
    return replace(w, role=role, nominal=False)


# --------------------------------------------------------------------------------------
# Comparing two prompts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSignals:
    """The lexical / structural comparison of two prompts (symmetric)."""

    matched: int
    unmatched_a: tuple[Word, ...]
    unmatched_b: tuple[Word, ...]
    conflicts: tuple[str, ...]


def _compound_match(x: str, y: str) -> bool:
    """``tabletop``/``table``, ``conditioner``/``condition``: one word extends the other."""
    short, long_ = (x, y) if len(x) <= len(y) else (y, x)
    return len(short) >= 4 and long_ != short and long_.startswith(short)


def _content(a: PromptAnalysis) -> list[Word]:
    return [w for w in a.words if w.role is not Role.FILLER]


def _align(a: PromptAnalysis, b: PromptAnalysis) -> tuple[int, list[Word], list[Word]]:
    ca, cb = _content(a), _content(b)
    left_b = list(cb)
    left_a: list[Word] = []
    matched = 0
    for w in ca:
        hit = next((v for v in left_b if w.aligns_with(v)), None)
        if hit is None:
            left_a.append(w)
        else:
            left_b.remove(hit)
            matched += 1
    matched += _join_compounds(left_a, left_b) + _join_compounds(left_b, left_a)
    rest_a: list[Word] = []
    for w in left_a:  # compounds and derivations among what is left
        hit = next((v for v in left_b if _compound_match(w.stem, v.stem)), None)
        if hit is None:
            rest_a.append(w)
        else:
            left_b.remove(hit)
            matched += 1
    # A word said twice on one side and once on the other ("printer printing" / "printer").
    rest_a = [w for w in rest_a if not _said_twice(w, ca, cb)]
    left_b = [w for w in left_b if not _said_twice(w, cb, ca)]
    # Modifiers at the same pole of a scale say the same thing ("light" / "gentle" rain).
    for w in list(rest_a):
        pole = _SCALE_OF.get(w.stem)
        if pole is None or w.role is not Role.MODIFIER:
            continue
        hit = next(
            (v for v in left_b if v.role is Role.MODIFIER and _SCALE_OF.get(v.stem) == pole),
            None,
        )
        if hit is not None:
            rest_a.remove(w)
            left_b.remove(hit)
            matched += 1
    return matched, rest_a, left_b


def _said_twice(w: Word, own: list[Word], other: list[Word]) -> bool:
    """w repeats a word of its own segment that the other prompt has ("printer printing")."""
    return any(
        v is not w and v.segment == w.segment and w.aligns_with(v) for v in own
    ) and any(w.aligns_with(v) for v in other)


def _join_compounds(pairs_side: list[Word], words_side: list[Word]) -> int:
    """Two words on one side written as one on the other ("lawn mower" / "lawnmower").
    Removes what it aligns from both lists; returns the number of alignments."""
    found = 0
    for v in list(words_side):
        for w1, w2 in pairwise(pairs_side):
            if v.text in (w1.text + w2.text, w1.text + w2.stem, w1.stem + w2.stem):
                pairs_side.remove(w1)
                pairs_side.remove(w2)
                words_side.remove(v)
                found += 1
                break
    return found


def _eponymous(w: Word, side: PromptAnalysis) -> bool:
    """An event named after its own source: "a printer printing", "a drummer drumming"."""
    for v in side.words:
        if v is w or v.role not in (Role.SOURCE, Role.SPECIFIER):
            continue
        if len(w.stem) >= 3 and v.stem.startswith(w.stem) and len(v.stem) - len(w.stem) <= 3:
            return True
    return False


def _scale_poles(words: Iterable[Word]) -> dict[str, set[int]]:
    poles: dict[str, set[int]] = {}
    for w in words:
        hit = _SCALE_OF.get(w.stem)
        if hit is not None and w.role in (Role.MODIFIER, Role.SOURCE, Role.CONTEXT):
            poles.setdefault(hit[0], set()).add(hit[1])
    return poles


def _events(words: Iterable[Word], side: PromptAnalysis) -> list[Word]:
    return [
        w
        for w in words
        if w.role in (Role.EVENT, Role.GENERIC, Role.MOTION) and not _eponymous(w, side)
    ]


def _generic_only(ev: list[Word]) -> bool:
    return all(w.role is Role.GENERIC for w in ev)


def _sound_nouns_only(ev: list[Word]) -> bool:
    return all(w.role is Role.GENERIC or (w.role is Role.EVENT and w.nominal) for w in ev)


def _events_compatible(ev_a: list[Word], ev_b: list[Word]) -> bool:
    """Unaligned events on both sides are compatible only when one side is a generic
    activity and the other names its sound with a noun ("a fan spinning" / "the whir of
    a fan")."""
    if _generic_only(ev_a) and _sound_nouns_only(ev_b):
        return True
    return _generic_only(ev_b) and _sound_nouns_only(ev_a)


def _order(a: PromptAnalysis) -> list[str]:
    """Stems of sources and events in the order the sounds happen."""
    salient = [w for w in a.words if w.role in (Role.SOURCE, Role.EVENT)]
    if a.reversed_order and a.clauses == 2:  # "B after A"
        salient = [w for w in salient if w.clause == 1] + [w for w in salient if w.clause == 0]
    seen: list[str] = []
    for w in salient:
        if w.stem not in seen:
            seen.append(w.stem)
    return seen


def _is_person(w: Word) -> bool:
    return _PERSON in w.groups


def _salient(w: Word) -> bool:
    return (w.role is Role.SOURCE and not _is_person(w)) or (
        w.role is Role.EVENT and not w.nominal
    )


def compare_prompts(a: PromptAnalysis, b: PromptAnalysis) -> PairSignals:
    """Align the content words of two prompts and list the conflicts between them."""
    matched, ua, ub = _align(a, b)
    conflicts: list[str] = []

    if a.negated != b.negated:
        conflicts.append("negation on one side only")
    if a.numbers != b.numbers:
        conflicts.append(
            f"different counts: {sorted(a.numbers) or '-'} vs {sorted(b.numbers) or '-'}"
        )

    # Opposite poles of a scale, over all words: "slow" / "fast", "man" / "woman".
    pa, pb = _scale_poles(a.words), _scale_poles(b.words)
    for scale in sorted(set(pa) & set(pb)):
        if len(pa[scale]) == 1 and len(pb[scale]) == 1 and pa[scale] != pb[scale]:
            conflicts.append(f"opposite {scale}")
    # One vs many of the same thing: "a single crow" / "crows", "a car" / "many cars".
    for x, px, y in ((a, pa, b), (b, pb, a)):
        x_things = [w for w in x.words if w.role in (Role.SOURCE, Role.EVENT)]
        if px.get("count") == {1} and any(
            w.plural and any(w.stem == v.stem for v in x_things) for w in y.words
        ):
            conflicts.append("one vs many")
            break
        y_many = any(w.text in _MANY for w in y.words)
        if not y_many and any(w.text in _MANY for w in x.words) and any(
            not w.plural and w.role in (Role.SOURCE, Role.EVENT)
            and any(v.plural and v.stem == w.stem for v in x_things)
            for w in y.words
        ):
            conflicts.append("one vs many")
            break

    # Sources: an unaligned source on each side means something else makes the sound.
    src_a = [w for w in ua if w.role in (Role.SOURCE, Role.PART)]
    src_b = [w for w in ub if w.role in (Role.SOURCE, Role.PART)]
    if _sources_conflict(src_a, src_b):
        conflicts.append(
            "different sources: "
            f"{' '.join(w.text for w in src_a)} vs {' '.join(w.text for w in src_b)}"
        )

    # Events: what the sources do.
    ev_a, ev_b = _events(ua, a), _events(ub, b)
    if ev_a and ev_b and not _events_compatible(ev_a, ev_b):
        conflicts.append(
            "different events: "
            f"{' '.join(w.text for w in ev_a)} vs {' '.join(w.text for w in ev_b)}"
        )

    # A sound source with its own event on one side only: "birds chirping and a dog
    # barking" / "birds chirping".
    for extra, other in ((ua, ev_b), (ub, ev_a)):
        if other:
            continue
        new_src = [w for w in extra if w.role is Role.SOURCE and not _is_person(w)]
        new_ev = [
            w
            for w in extra
            if (w.role is Role.EVENT and not w.nominal) or w.role in (Role.GENERIC, Role.MOTION)
        ]
        if new_src and new_ev and any(x.clause == y.clause for x in new_src for y in new_ev):
            conflicts.append(
                "an extra sound on one side: "
                f"{' '.join(w.text for w in new_src)} {' '.join(w.text for w in new_ev)}"
            )
            break

    # Every sound (a source with what it does) on one side must be on the other too.
    extra_units = _uncovered_units(a, b) + _uncovered_units(b, a)
    # In a prompt that lists several sounds, an event the other prompt lacks is one more.
    for x, extra, other in ((a, ua, ev_b), (b, ub, ev_a)):
        if extra_units or any(w.role is Role.EVENT for w in other) or not _multi_segment(x):
            continue
        lone = [w.text for w in extra if w.role is Role.EVENT and not _describes_source(w, x)]
        if lone:
            extra_units.append(" ".join(lone))
    if extra_units:
        conflicts.append("an extra sound on one side: " + "; ".join(extra_units))

    # Different noun specifiers of one source: "a train horn" / "a ship horn".
    spec_a = [w for w in ua if w.role is Role.SPECIFIER]
    spec_b = [w for w in ub if w.role is Role.SPECIFIER]
    if spec_a and spec_b:
        conflicts.append(
            "different kinds: "
            f"{' '.join(w.text for w in spec_a)} vs {' '.join(w.text for w in spec_b)}"
        )

    # The same sources in swapped roles: "a dog barking at a cat" / "a cat barking at a dog".
    order_a, order_b = _agent_patient(a, b), _agent_patient(b, a)
    if order_a and order_b and order_a != order_b:
        conflicts.append("the same sources in other roles")

    # A sequence of sounds on one side only, or the same sounds in another order.
    if a.clauses != b.clauses:
        extra = ua if a.clauses > b.clauses else ub
        if any(w.role not in (Role.CONTEXT, Role.FILLER) for w in extra):
            conflicts.append("a sequence of sounds on one side only")
    elif a.clauses > 1:
        oa, ob = _order(a), _order(b)
        common = set(oa) & set(ob)
        if [s for s in oa if s in common] != [s for s in ob if s in common]:
            conflicts.append("same sounds in a different order")

    ev_free = _drop_compatible_events(ua, ub, a, b)
    return PairSignals(
        matched=matched,
        unmatched_a=tuple(w for w in ua if w not in ev_free),
        unmatched_b=tuple(w for w in ub if w not in ev_free),
        conflicts=tuple(dict.fromkeys(conflicts)),
    )


def _multi_segment(x: PromptAnalysis) -> bool:
    return len({w.segment for w in x.words if w.role is not Role.FILLER}) > 1


def _describes_source(w: Word, x: PromptAnalysis) -> bool:
    """A sound noun that says how a source sounds: "the whir of a fan", "crackle and
    beep of a radio", "a whistling kettle"."""
    if not w.nominal:
        return False
    words = list(x.words)
    i = words.index(w)
    rest = words[i + 1 :]
    return any(v.role in (Role.SOURCE, Role.SPECIFIER) and v.segment == w.segment for v in rest) or (
        bool(rest) and rest[0].segment != w.segment and rest[0].role is Role.EVENT
    )


def _units(x: PromptAnalysis) -> dict[int, list[Word]]:
    """Segments of x that name a source: one sound each ("a dog barks", "a man speaks")."""
    segs: dict[int, list[Word]] = {}
    for w in x.words:
        if w.role is not Role.FILLER:
            segs.setdefault(w.segment, []).append(w)
    return {
        k: v for k, v in segs.items() if any(w.role in (Role.SOURCE, Role.PART) for w in v)
    }


def _uncovered_units(x: PromptAnalysis, y: PromptAnalysis) -> list[str]:
    """Sounds of x with no counterpart in y (counted: two men speaking are two sounds)."""
    units_y = _units(y)
    free_y = dict(units_y)
    y_events = [w for w in y.words if w.role in (Role.EVENT, Role.GENERIC)]
    out: list[str] = []
    segs_x = [w.segment for w in x.words if w.role is not Role.FILLER]
    multi = len(set(segs_x)) > 1
    for words in _units(x).values():
        named = [w for w in words if w.role in (Role.SOURCE, Role.PART) and not _is_person(w)]
        if named:
            hit = next(
                (
                    k
                    for k, v in free_y.items()
                    if any(
                        n.aligns_with(m) or _compound_match(n.stem, m.stem)
                        for n in named
                        for m in v
                        if m.role in (Role.SOURCE, Role.SPECIFIER, Role.PART)
                    )
                ),
                None,
            )
            if hit is None and any(
                n.aligns_with(m) for n in named for m in y.words if m.role is Role.SOURCE
            ):
                hit = -1  # the source is there, named in a segment already used
            if hit is None:
                if multi or len(units_y) > 1:
                    out.append(" ".join(w.text for w in words))
            elif hit >= 0:
                del free_y[hit]
            continue
        # "someone sighing": a person doing something. Covered by a person in y, or by
        # y's same event with no named source ("a long sigh").
        humans = [
            k for k, v in free_y.items() if any(w.stem in _PEOPLE or _is_person(w) for w in v)
        ]
        if humans:
            del free_y[humans[0]]
            continue
        events = [w for w in words if w.role in (Role.EVENT, Role.GENERIC)]
        if not units_y and any(e.aligns_with(v) for e in events for v in y_events):
            continue
        if multi or len(units_y) > 1:
            out.append(" ".join(w.text for w in words))
    return out


def _agent_patient(x: PromptAnalysis, y: PromptAnalysis) -> tuple[str, str] | None:
    """(first, second) for "<source> <event> ... <source>" in x, both sources also in y."""
    y_groups = {g for w in y.words if w.role is Role.SOURCE for g in w.groups}
    words = [w for w in x.words if w.role is not Role.FILLER]
    for i, w in enumerate(words):
        if w.role is not Role.SOURCE or not (w.groups & y_groups):
            continue
        if i + 1 >= len(words) or words[i + 1].role is not Role.EVENT:
            return None
        for v in words[i + 2 :]:
            if v.role is Role.SOURCE and v.groups & y_groups and not (v.groups & w.groups):
                return min(w.groups & y_groups), min(v.groups & y_groups)
        return None
    return None


def _sources_conflict(src_a: list[Word], src_b: list[Word]) -> bool:
    if not src_a or not src_b:
        return False
    # "someone" / "a person" is no source stated: it conflicts with an animal or a thing
    # that makes the sound, not with a part or an implement ("slurping soup from a spoon").
    named_a = [w for w in src_a if not _is_person(w)]
    named_b = [w for w in src_b if not _is_person(w)]
    if not named_a:
        return any(w.role is Role.SOURCE and w.stem not in _PEOPLE for w in named_b)
    if not named_b:
        return any(w.role is Role.SOURCE and w.stem not in _PEOPLE for w in named_a)
    return True


def _drop_compatible_events(
    ua: list[Word], ub: list[Word], a: PromptAnalysis, b: PromptAnalysis
) -> list[Word]:
    """Events that are accounted for: eponymous ones, and a generic activity on one side
    paired with the sound noun on the other."""
    ev_a, ev_b = _events(ua, a), _events(ub, b)
    free = [w for w in ua + ub if w.role in (Role.EVENT, Role.GENERIC, Role.MOTION)]
    free = [w for w in free if w not in ev_a and w not in ev_b]  # eponymous
    if ev_a and ev_b and _events_compatible(ev_a, ev_b):
        free.extend(ev_a + ev_b)
    return free


# --------------------------------------------------------------------------------------
# The judge
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReuseThresholds:
    """Thresholds of the reuse decision.

    ``tau_semantic``: minimum embedding cosine for a cached prompt to be a candidate at all
    (the vector search prefilters with it). ``tau_reuse``: minimum combined score to accept.
    """

    tau_semantic: float
    tau_reuse: float

    def __post_init__(self) -> None:
        if not -1.0 <= self.tau_semantic <= 1.0:
            raise ValueError(f"tau_semantic must be in [-1, 1], got {self.tau_semantic}")
        if not -2.0 <= self.tau_reuse <= 2.0:
            raise ValueError(f"tau_reuse must be in [-2, 2], got {self.tau_reuse}")


@dataclass(frozen=True)
class ScoreWeights:
    """How the lexical signals move the score away from the cosine."""

    aligned_bonus: float = 0.10  # every source and event aligned, nothing salient extra
    extra_source: float = 0.06  # per source word on one side only
    extra_event: float = 0.06  # per event verb on one side only
    extra_sound_noun: float = 0.02  # per sound noun on one side only ("the roar of")
    extra_minor: float = 0.02  # per part, specifier, modifier or context word
    extra_motion: float = 0.03
    conflict: float = 1.0  # any conflict: far below every threshold


DEFAULT_WEIGHTS = ScoreWeights()


@dataclass(frozen=True)
class ReuseDecision:
    """The judge's answer for one (new prompt, candidate) pair."""

    accept: bool
    score: float
    cosine: float
    reason: str
    conflicts: tuple[str, ...] = field(default=())


class ReuseJudge:
    """Decides whether a candidate's audio may serve a new prompt. Pure and symmetric."""

    def __init__(
        self, thresholds: ReuseThresholds, weights: ScoreWeights = DEFAULT_WEIGHTS
    ) -> None:
        self.thresholds = thresholds
        self.weights = weights

    def score(
        self, new_prompt: str, candidate_prompt: str, cosine: float
    ) -> tuple[float, PairSignals]:
        """The combined score and the signals behind it."""
        signals = compare_prompts(analyse_prompt(new_prompt), analyse_prompt(candidate_prompt))
        w = self.weights
        s = float(cosine)
        if signals.conflicts:
            return s - w.conflict, signals
        extra = signals.unmatched_a + signals.unmatched_b
        penalty = 0.0
        for word in extra:
            if word.role is Role.SOURCE:
                penalty += 0.0 if _is_person(word) else w.extra_source
            elif word.role is Role.EVENT:
                penalty += w.extra_sound_noun if word.nominal else w.extra_event
            elif word.role is Role.MOTION:
                penalty += w.extra_motion
            elif word.role in (Role.PART, Role.SPECIFIER, Role.MODIFIER, Role.CONTEXT):
                penalty += w.extra_minor
        aligned = not any(_salient(x) for x in extra)
        bonus = w.aligned_bonus if aligned and signals.matched > 0 else 0.0
        return s + bonus - penalty, signals

    def decide(self, new_prompt: str, candidate_prompt: str, cosine: float) -> ReuseDecision:
        """Accept or refuse serving ``candidate_prompt``'s audio for ``new_prompt``."""
        cos = float(cosine)
        t = self.thresholds
        if normalise_prompt(new_prompt) == normalise_prompt(candidate_prompt):
            return ReuseDecision(True, max(cos, 1.0), cos, "same prompt after normalisation")
        if cos < t.tau_semantic:
            return ReuseDecision(
                False, cos, cos, f"cosine {cos:.3f} below tau_semantic {t.tau_semantic:.3f}"
            )
        score, signals = self.score(new_prompt, candidate_prompt, cos)
        if signals.conflicts:
            return ReuseDecision(
                False, score, cos, "conflict: " + "; ".join(signals.conflicts), signals.conflicts
            )
        if score < t.tau_reuse:
            extra = [w.text for w in signals.unmatched_a + signals.unmatched_b]
            detail = f" (unaligned: {', '.join(extra)})" if extra else ""
            return ReuseDecision(
                False, score, cos, f"score {score:.3f} below tau_reuse {t.tau_reuse:.3f}{detail}"
            )
        return ReuseDecision(True, score, cos, f"score {score:.3f} >= tau_reuse {t.tau_reuse:.3f}")


# Calibrated for precision first (docs/cache.md): labelled pairs give the
# recall, a hand-labelled sample of AudioCaps reuses the precision of multi-sound prompts.
# A candidate can only pass with cosine >= tau_reuse - aligned_bonus (0.65), so the prefilter
# sits a little below that.
DEFAULT_THRESHOLDS = ReuseThresholds(tau_semantic=0.6, tau_reuse=0.75)
