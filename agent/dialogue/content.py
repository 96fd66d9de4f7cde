"""What is said in the synthetic dialogues: intents with paraphrases and slots, a facts table, real chat turns.

Every exchange is a user request and the agent's answer. The answer is a deterministic function of the request
(intent + slot values; for chat turns, a fixed reply per cleaned message), short (1–2 sentences), lower-case,
with numbers written as words, so that a model can learn it from speech.

Held-out slot values: :func:`slot_split` assigns every slot value (a country, an animal, a name, a number pair,
a word to spell, a chat conversation, ...) to train/val/test by a stable hash (80/10/10). Train dialogues only
use train values; val/test dialogues prefer their own held-out values (``heldout_share``) and fill up with
train values where a slot kind has none.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# numbers and letters

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def num_words(n: int) -> str:
    """0..9999 as English words (``21`` -> ``twenty-one``; negative numbers get ``minus``)."""
    if n < 0:
        return "minus " + num_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        t, o = divmod(n, 10)
        return _TENS[t] + ("-" + _ONES[o] if o else "")
    if n < 1000:
        h, r = divmod(n, 100)
        return _ONES[h] + " hundred" + (" and " + num_words(r) if r else "")
    th, r = divmod(n, 1000)
    return num_words(th) + " thousand" + ((" and " if r < 100 else " ") + num_words(r) if r else "")


# How the agent voice (Piper) should pronounce a letter said on its own; [[...]] is raw IPA for Piper.
LETTER_TTS = {"a": "[[ˈeɪ]]", "b": "bee", "c": "see", "d": "dee", "e": "[[ˈiː]]", "f": "eff", "g": "gee",
              "h": "aitch", "i": "eye", "j": "jay", "k": "kay", "l": "el", "m": "em", "n": "en", "o": "oh",
              "p": "pee", "q": "cue", "r": "are", "s": "ess", "t": "tee", "u": "you", "v": "vee",
              "w": "[[dˈʌbəljuː]]", "x": "ex", "y": "why", "z": "zee"}
# How the user voices (espeak/flite/festival) should say a letter.
LETTER_SAY = {**LETTER_TTS, "a": "ay", "e": "ee", "w": "double you"}


# ---------------------------------------------------------------------------------------------------------------
# facts table

COUNTRIES = [  # name, capital, continent, language
    ("france", "paris", "europe", "french"), ("germany", "berlin", "europe", "german"),
    ("italy", "rome", "europe", "italian"), ("spain", "madrid", "europe", "spanish"),
    ("portugal", "lisbon", "europe", "portuguese"), ("greece", "athens", "europe", "greek"),
    ("poland", "warsaw", "europe", "polish"), ("sweden", "stockholm", "europe", "swedish"),
    ("norway", "oslo", "europe", "norwegian"), ("finland", "helsinki", "europe", "finnish"),
    ("ireland", "dublin", "europe", "english"), ("russia", "moscow", "europe", "russian"),
    ("austria", "vienna", "europe", "german"), ("hungary", "budapest", "europe", "hungarian"),
    ("denmark", "copenhagen", "europe", "danish"), ("iceland", "reykjavik", "europe", "icelandic"),
    ("egypt", "cairo", "africa", "arabic"), ("kenya", "nairobi", "africa", "swahili"),
    ("nigeria", "abuja", "africa", "english"), ("morocco", "rabat", "africa", "arabic"),
    ("ghana", "accra", "africa", "english"), ("ethiopia", "addis ababa", "africa", "amharic"),
    ("japan", "tokyo", "asia", "japanese"), ("china", "beijing", "asia", "chinese"),
    ("india", "new delhi", "asia", "hindi"), ("thailand", "bangkok", "asia", "thai"),
    ("vietnam", "hanoi", "asia", "vietnamese"), ("south korea", "seoul", "asia", "korean"),
    ("indonesia", "jakarta", "asia", "indonesian"), ("turkey", "ankara", "asia", "turkish"),
    ("canada", "ottawa", "north america", "english"), ("mexico", "mexico city", "north america", "spanish"),
    ("cuba", "havana", "north america", "spanish"), ("brazil", "brasilia", "south america", "portuguese"),
    ("argentina", "buenos aires", "south america", "spanish"), ("peru", "lima", "south america", "spanish"),
    ("chile", "santiago", "south america", "spanish"), ("colombia", "bogota", "south america", "spanish"),
    ("australia", "canberra", "oceania", "english"), ("new zealand", "wellington", "oceania", "english"),
]

ANIMALS = [  # name, sound (None: no sound), legs, class, baby
    ("dog", "woof", 4, "mammal", "puppy"), ("cat", "meow", 4, "mammal", "kitten"),
    ("cow", "moo", 4, "mammal", "calf"), ("horse", "neigh", 4, "mammal", "foal"),
    ("sheep", "baa", 4, "mammal", "lamb"), ("pig", "oink", 4, "mammal", "piglet"),
    ("duck", "quack", 2, "bird", "duckling"), ("chicken", "cluck", 2, "bird", "chick"),
    ("owl", "hoot", 2, "bird", "owlet"), ("lion", "roar", 4, "mammal", "cub"),
    ("frog", "ribbit", 4, "amphibian", "tadpole"), ("snake", "hiss", 0, "reptile", "hatchling"),
    ("bee", "buzz", 6, "insect", "larva"), ("mouse", "squeak", 4, "mammal", "pup"),
    ("donkey", "hee haw", 4, "mammal", "foal"), ("wolf", "howl", 4, "mammal", "pup"),
    ("crow", "caw", 2, "bird", "chick"), ("spider", None, 8, "arachnid", "spiderling"),
    ("ant", None, 6, "insect", "larva"), ("octopus", None, 8, "mollusc", "hatchling"),
    ("bear", "growl", 4, "mammal", "cub"), ("tiger", "roar", 4, "mammal", "cub"),
    ("turkey", "gobble", 2, "bird", "poult"), ("whale", None, 0, "mammal", "calf"),
    ("shark", None, 0, "fish", "pup"), ("penguin", None, 2, "bird", "chick"),
    ("butterfly", None, 6, "insect", "caterpillar"), ("crab", None, 10, "crustacean", "zoea"),
    ("dolphin", "click", 0, "mammal", "calf"), ("ostrich", None, 2, "bird", "chick"),
    ("camel", None, 4, "mammal", "calf"), ("zebra", None, 4, "mammal", "foal"),
    ("giraffe", None, 4, "mammal", "calf"), ("rabbit", None, 4, "mammal", "kit"),
    ("goose", "honk", 2, "bird", "gosling"), ("elephant", "trumpet", 4, "mammal", "calf"),
    ("goat", "bleat", 4, "mammal", "kid"), ("kangaroo", None, 2, "mammal", "joey"),
]

COLOURED = [("the sky", "blue"), ("grass", "green"), ("a banana", "yellow"), ("snow", "white"), ("coal", "black"),
            ("a tomato", "red"), ("a carrot", "orange"), ("a lemon", "yellow"), ("a pumpkin", "orange"),
            ("chocolate", "brown"), ("milk", "white"), ("a frog", "green"), ("a strawberry", "red"),
            ("the sun", "yellow"), ("a crow", "black"), ("a polar bear", "white"), ("a fire truck", "red"),
            ("a lime", "green"), ("an eggplant", "purple"), ("a flamingo", "pink"), ("the ocean", "blue"),
            ("a cherry", "red"), ("a zebra", "black and white"), ("a penguin", "black and white")]
COLOURS = ["red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey"]

SPELL_WORDS = ["cat", "dog", "sun", "tree", "book", "fish", "bird", "apple", "house", "water", "green", "happy",
               "moon", "star", "milk", "bread", "chair", "table", "music", "phone", "river", "cloud", "horse",
               "plant", "smile", "train", "beach", "lemon", "tiger", "piano", "pizza", "light", "ocean", "mouse",
               "paper", "clock", "snake", "juice", "candy", "shoe", "hat", "cup", "box", "pen", "bus", "car",
               "egg", "map", "red", "blue", "frog", "duck", "cake", "rain", "snow", "wind", "kite", "lamp",
               "door", "road", "ship", "king", "queen", "zebra", "robot", "happy", "quiet", "jump", "fox", "yes"]

NAMES = ["alice", "ben", "carla", "daniel", "emma", "felix", "grace", "henry", "isla", "jack", "kate", "liam",
         "maya", "noah", "olivia", "peter", "quinn", "rosa", "sam", "tara", "umar", "vera", "will", "zoe", "anna",
         "boris", "chloe", "david", "elena", "frank", "george", "hannah", "ivan", "julia", "kevin", "laura",
         "marco", "nina", "oscar", "paula", "ryan", "sofia", "tom", "lucy", "mark", "sarah", "james", "amir",
         "priya", "kenji", "mei", "carlos", "fatima", "omar", "leo", "ruby", "jonas", "ella", "max", "nora"]

OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
             ("day", "night"), ("open", "closed"), ("old", "young"), ("light", "dark"), ("wet", "dry"),
             ("full", "empty"), ("hard", "soft"), ("loud", "quiet"), ("early", "late"), ("left", "right"),
             ("tall", "short"), ("thick", "thin"), ("strong", "weak"), ("clean", "dirty"), ("first", "last"),
             ("good", "bad"), ("inside", "outside"), ("rich", "poor"), ("win", "lose")]
PLURALS = [("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("goose", "geese"),
           ("man", "men"), ("woman", "women"), ("person", "people"), ("sheep", "sheep"), ("fish", "fish"),
           ("box", "boxes"), ("baby", "babies"), ("leaf", "leaves"), ("knife", "knives"), ("cactus", "cacti"),
           ("ox", "oxen"), ("wolf", "wolves"), ("city", "cities"), ("bus", "buses"), ("potato", "potatoes")]
RHYMES = [("cat", "hat"), ("dog", "log"), ("sun", "fun"), ("tree", "bee"), ("cake", "lake"), ("star", "car"),
          ("moon", "spoon"), ("bed", "red"), ("ring", "sing"), ("boat", "goat"), ("house", "mouse"),
          ("light", "night"), ("bear", "chair"), ("fish", "dish"), ("rain", "train"), ("pen", "ten"),
          ("book", "look"), ("box", "fox"), ("bell", "shell"), ("hill", "pill")]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
JOKES = {
    None: "why did the scarecrow win an award? because he was outstanding in his field.",
    "animals": "what do you call a sleeping bull? a bulldozer.",
    "food": "why did the banana go to the doctor? because it was not peeling well.",
    "computers": "why was the computer cold? it left its windows open.",
    "school": "why did the student eat his homework? the teacher said it was a piece of cake.",
    "music": "why did the piano player bang his head on the keys? he was playing by ear.",
    "space": "how do you throw a party in space? you planet.",
    "math": "why was six afraid of seven? because seven ate nine.",
    "fish": "what do you call a fish with no eyes? a fsh.",
    "cats": "what do cats eat for breakfast? mice krispies.",
    "dogs": "what do you call a dog magician? a labracadabrador.",
    "the ocean": "what did the ocean say to the beach? nothing, it just waved.",
}
REPEAT_PHRASES = ["the cat sat on the mat", "i like green apples", "the sun is very bright today", "good morning everyone",
                  "my dog likes to run", "the train is late again", "we are going to the park", "one two three",
                  "she sells sea shells", "the sky is clear tonight", "i love to read books", "please pass the salt",
                  "the music is too loud", "let's go for a walk", "happy birthday to you", "the bread is warm",
                  "i can see the moon", "the door is open", "we had pizza for dinner", "the bird is singing",
                  "it is a lovely day", "my phone is on the table", "turn left at the corner",
                  "the kids are playing outside", "this soup is delicious", "the river is very long",
                  "i forgot my umbrella", "the shop closes at night", "the baby is sleeping", "red and blue make purple"]

# ---------------------------------------------------------------------------------------------------------------
# held-out split of slot values


def _h(s: str) -> float:
    return int(hashlib.sha1(s.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def slot_split(kind: str, value) -> str:
    """Which split owns a slot value: ``train`` (80 %), ``val`` (10 %) or ``test`` (10 %), by a stable hash."""
    u = _h(f"{kind}:{value}")
    return "val" if u < 0.1 else "test" if u < 0.2 else "train"


@dataclass
class Exchange:
    """One user request and the agent's answer."""
    intent: str
    question: str                 # what the user says (display text)
    answer: str                   # what the agent says (display text)
    slots: dict = field(default_factory=dict)   # slot kind -> value; each checked with slot_split
    question_say: str | None = None             # how a user voice should say it, if different
    answer_tts: list[str] | None = None         # per-word pronunciation for the agent voice, if different

    @property
    def say(self) -> str:
        return self.question_say or self.question


class Picker:
    """Draws slot values for one split: train draws only train values; val/test draw their held-out values
    with probability ``heldout_share`` (else train values)."""

    def __init__(self, rng: np.random.Generator, split: str, heldout_share: float = 0.6):
        self.rng, self.split, self.share = rng, split, heldout_share

    def pick(self, kind: str, values: list):
        own = [v for v in values if slot_split(kind, _key(v)) == self.split]
        train = [v for v in values if slot_split(kind, _key(v)) == "train"]
        pool = train
        if self.split != "train" and own and (self.rng.random() < self.share or not train):
            pool = own
        if not pool:
            pool = values
        return pool[int(self.rng.integers(len(pool)))]

    def choice(self, seq):
        return seq[int(self.rng.integers(len(seq)))]


def _key(v) -> str:
    return v[0] if isinstance(v, tuple) else str(v)


def _an(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


# ---------------------------------------------------------------------------------------------------------------
# intents: each a function (Picker) -> Exchange


def greeting(p: Picker) -> Exchange:
    q = p.choice(["hello", "hi", "hey", "hi there", "hello there", "hey there", "good morning", "good afternoon",
                  "good evening", "hiya", "hello, are you there", "morning"])
    if "morning" in q:
        a = "good morning! how can i help you?"
    elif "afternoon" in q:
        a = "good afternoon! how can i help you?"
    elif "evening" in q:
        a = "good evening! how can i help you?"
    elif "there" in q and "are you" in q:
        a = "yes, i'm here. how can i help?"
    else:
        a = "hello! how can i help you today?"
    return Exchange("greeting", q, a)


def farewell(p: Picker) -> Exchange:
    q = p.choice(["bye", "goodbye", "see you later", "i have to go now", "talk to you later", "bye bye",
                  "good night", "that's all for now, bye", "okay, i'm done, thanks", "see you tomorrow"])
    a = ("good night! sleep well." if "night" in q else "see you tomorrow! have a nice day." if "tomorrow" in q
         else "you're welcome. goodbye!" if "thanks" in q else "goodbye! it was nice talking to you.")
    return Exchange("farewell", q, a)


def name_intro(p: Picker) -> Exchange:
    n = p.pick("name", NAMES)
    q = p.choice([f"my name is {n}", f"i'm {n}", f"call me {n}", f"hi, i'm {n}", f"hello, my name is {n}",
                  f"you can call me {n}", f"hey, it's {n} here"])
    return Exchange("name_intro", q, f"nice to meet you, {n}.", {"name": n})


def agent_name(p: Picker) -> Exchange:
    q = p.choice(["what's your name", "what is your name", "who are you", "what should i call you",
                  "do you have a name"])
    return Exchange("agent_name", q, "my name is duplex. i'm a small voice assistant.")


def arithmetic(p: Picker) -> Exchange:
    op = p.choice(["plus", "minus", "times"])
    pairs = [(a, b) for a in range(0, 21) for b in range(0, 21)]
    if op == "minus":
        pairs = [(a, b) for a, b in pairs if a >= b]
    if op == "times":
        pairs = [(a, b) for a, b in pairs if a <= 12 and b <= 12]
    a, b = p.pick(f"arith_{op}", [(f"{x},{y}", x, y) for x, y in pairs])[1:]
    r = a + b if op == "plus" else a - b if op == "minus" else a * b
    A, B, R = num_words(a), num_words(b), num_words(r)
    forms = {"plus": [f"what is {A} plus {B}", f"what's {A} plus {B}", f"how much is {A} plus {B}",
                      f"can you add {A} and {B}", f"what do you get if you add {A} and {B}", f"{A} plus {B}"],
             "minus": [f"what is {A} minus {B}", f"what's {A} minus {B}", f"how much is {A} minus {B}",
                       f"what is {B} taken away from {A}", f"{A} minus {B} is what"],
             "times": [f"what is {A} times {B}", f"what's {A} times {B}", f"how much is {A} times {B}",
                       f"what do you get if you multiply {A} by {B}", f"{A} times {B}"]}
    return Exchange("arithmetic", p.choice(forms[op]), f"{A} {op} {B} is {R}.", {f"arith_{op}": f"{a},{b}"})


def counting(p: Picker) -> Exchange:
    n = p.pick("count", list(range(3, 11)))
    N = num_words(n)
    seq = [num_words(i) for i in range(1, n + 1)]
    if p.rng.random() < 0.3:
        q = p.choice([f"count down from {N}", f"can you count backwards from {N}", f"count down from {N} please"])
        seq = seq[::-1]
        intent = "count_down"
    else:
        q = p.choice([f"count to {N}", f"can you count to {N}", f"count from one to {N}", f"please count to {N}",
                      f"let's count to {N}"])
        intent = "count_up"
    return Exchange(intent, q, ", ".join(seq) + ".", {"count": n})


def spelling(p: Picker) -> Exchange:
    w = p.pick("spell", sorted(set(SPELL_WORDS)))
    q = p.choice([f"how do you spell {w}", f"spell the word {w}", f"can you spell {w} for me", f"spell {w}",
                  f"how is {w} spelled"])
    letters = list(w)
    answer = f"{w} is spelled " + " ".join(letters) + "."
    tts = [w, "is", "spelled"] + [LETTER_TTS[c] for c in letters]
    tts[-1] += "."
    return Exchange("spelling", q, answer, {"spell": w}, answer_tts=tts)


def letters(p: Picker) -> Exchange:
    i = p.pick("letter", list(range(1, 25)))  # b..y (a and z have no neighbour on one side; a is ambiguous)
    alpha = "abcdefghijklmnopqrstuvwxyz"
    c = alpha[i]
    if p.rng.random() < 0.5:
        q, qs = f"what letter comes after {c}", f"what letter comes after {LETTER_SAY[c]}"
        ans, tts = f"{alpha[i + 1]} comes after {c}.", [LETTER_TTS[alpha[i + 1]], "comes", "after", LETTER_TTS[c] + "."]
        intent = "letter_after"
    else:
        q, qs = f"what letter comes before {c}", f"what letter comes before {LETTER_SAY[c]}"
        ans, tts = f"{alpha[i - 1]} comes before {c}.", [LETTER_TTS[alpha[i - 1]], "comes", "before",
                                                         LETTER_TTS[c] + "."]
        intent = "letter_before"
    return Exchange(intent, q, ans, {"letter": i}, question_say=qs, answer_tts=tts)


def colour_of(p: Picker) -> Exchange:
    thing, col = p.pick("coloured", COLOURED)
    bare = thing.split(" ", 1)[1] if thing.startswith(("a ", "an ", "the ")) else thing
    q = p.choice([f"what colour is {thing}", f"what color is {thing}", f"tell me the colour of {thing}",
                  f"what colour is {bare}" if thing.startswith("the ") else f"what colour are {bare}s"
                  if thing.startswith(("a ", "an ")) else f"what colour is {bare}"])
    if " are " in q:
        return Exchange("colour", q, f"{bare}s are {col}.", {"coloured": thing})
    return Exchange("colour", q, f"{thing} is {col}.", {"coloured": thing})


def favourite(p: Picker) -> Exchange:
    topic = p.choice(["colour", "animal", "food", "song", "number", "season"])
    qs = {"colour": ["what's your favourite colour", "what is your favorite color", "which colour do you like best"],
          "animal": ["what's your favourite animal", "which animal do you like best", "do you have a favorite animal"],
          "food": ["what's your favourite food", "what do you like to eat", "do you have a favorite food"],
          "song": ["what's your favourite song", "do you like music", "what music do you like"],
          "number": ["what's your favourite number", "do you have a favorite number"],
          "season": ["what's your favourite season", "do you like summer or winter"]}
    ans = {"colour": "i like blue, like the sky.", "animal": "i like owls. they seem very wise.",
           "food": "i don't eat, but pizza sounds nice.", "song": "i like songs with a good beat.",
           "number": "my favourite number is seven.", "season": "i like spring, when the flowers come out."}
    return Exchange("favourite", p.choice(qs[topic]), ans[topic])


def capital(p: Picker) -> Exchange:
    c, cap, _, _ = p.pick("country", COUNTRIES)
    q = p.choice([f"what is the capital of {c}", f"what's the capital of {c}", f"tell me the capital of {c}",
                  f"which city is the capital of {c}", f"do you know the capital of {c}"])
    return Exchange("capital", q, f"the capital of {c} is {cap}.", {"country": c})


def continent(p: Picker) -> Exchange:
    c, _, cont, _ = p.pick("country", COUNTRIES)
    q = p.choice([f"where is {c}", f"which continent is {c} in", f"what continent is {c} on",
                  f"is {c} in europe or asia" if cont in ("europe", "asia") else f"where in the world is {c}"])
    return Exchange("continent", q, f"{c} is in {cont}.", {"country": c})


def language(p: Picker) -> Exchange:
    c, _, _, lang = p.pick("country", COUNTRIES)
    q = p.choice([f"what language do they speak in {c}", f"what do people speak in {c}",
                  f"which language is spoken in {c}"])
    return Exchange("language", q, f"in {c}, people speak {lang}.", {"country": c})


def animal_sound(p: Picker) -> Exchange:
    a, snd, *_ = p.pick("animal", [x for x in ANIMALS if x[1]])
    q = p.choice([f"what sound does {_an(a)} make", f"what does {_an(a)} say", f"how does {_an(a)} sound",
                  f"what noise does {_an(a)} make"])
    return Exchange("animal_sound", q, f"{_an(a)} says {snd}.", {"animal": a})


def animal_legs(p: Picker) -> Exchange:
    a, _, legs, *_ = p.pick("animal", ANIMALS)
    q = p.choice([f"how many legs does {_an(a)} have", f"how many legs has {_an(a)} got",
                  f"does {_an(a)} have legs" if legs == 0 else f"count the legs of {_an(a)} for me"])
    ans = f"{_an(a)} has no legs." if legs == 0 else f"{_an(a)} has {num_words(legs)} legs."
    if q.startswith("does "):
        ans = "no, " + ans
    return Exchange("animal_legs", q, ans, {"animal": a})


def animal_class(p: Picker) -> Exchange:
    a, _, _, cls, _ = p.pick("animal", ANIMALS)
    q = p.choice([f"what kind of animal is {_an(a)}", f"what type of animal is {_an(a)}",
                  f"is {_an(a)} a mammal"])
    if q.startswith("is "):
        ans = f"yes, {_an(a)} is a mammal." if cls == "mammal" else f"no, {_an(a)} is {_an(cls)}."
        return Exchange("yes_no", q, ans, {"animal": a})
    return Exchange("animal_class", q, f"{_an(a)} is {_an(cls)}.", {"animal": a})


def animal_baby(p: Picker) -> Exchange:
    a, *_, baby = p.pick("animal", ANIMALS)
    q = p.choice([f"what is a baby {a} called", f"what do you call a baby {a}", f"what's a baby {a} called"])
    return Exchange("animal_baby", q, f"a baby {a} is called {_an(baby)}.", {"animal": a})


def yes_no(p: Picker) -> Exchange:
    kind = p.choice(["capital", "continent", "legs", "colour", "sum"])
    if kind == "capital":
        c, cap, _, _ = p.pick("country", COUNTRIES)
        other = COUNTRIES[int(p.rng.integers(len(COUNTRIES)))][1]
        guess = cap if p.rng.random() < 0.5 else other
        q = f"is {guess} the capital of {c}"
        ans = f"yes, {cap} is the capital of {c}." if guess == cap else f"no, the capital of {c} is {cap}."
        return Exchange("yes_no", q, ans, {"country": c})
    if kind == "continent":
        c, _, cont, _ = p.pick("country", COUNTRIES)
        guess = cont if p.rng.random() < 0.5 else p.choice(["europe", "asia", "africa", "south america"])
        q = f"is {c} in {guess}"
        ans = f"yes, {c} is in {cont}." if guess == cont else f"no, {c} is in {cont}."
        return Exchange("yes_no", q, ans, {"country": c})
    if kind == "legs":
        a, _, legs, *_ = p.pick("animal", ANIMALS)
        guess = legs if p.rng.random() < 0.5 else int(p.choice([2, 4, 6, 8]))
        q = f"does {_an(a)} have {num_words(guess)} legs" if guess else f"does {_an(a)} have legs"
        n = "no legs" if legs == 0 else f"{num_words(legs)} legs"
        ans = f"yes, {_an(a)} has {n}." if guess == legs and legs else f"no, {_an(a)} has {n}."
        return Exchange("yes_no", q, ans, {"animal": a})
    if kind == "colour":
        thing, col = p.pick("coloured", COLOURED)
        guess = col if p.rng.random() < 0.5 else p.choice(COLOURS)
        q = f"is {thing} {guess}"
        ans = f"yes, {thing} is {col}." if guess == col else f"no, {thing} is {col}."
        return Exchange("yes_no", q, ans, {"coloured": thing})
    a, b = p.pick("arith_plus", [(f"{x},{y}", x, y) for x in range(11) for y in range(11)])[1:]
    guess = a + b if p.rng.random() < 0.5 else a + b + int(p.choice([-2, -1, 1, 2]))
    guess = max(guess, 0)
    q = f"is {num_words(a)} plus {num_words(b)} {num_words(guess)}"
    ans = (f"yes, {num_words(a)} plus {num_words(b)} is {num_words(a + b)}." if guess == a + b
           else f"no, {num_words(a)} plus {num_words(b)} is {num_words(a + b)}.")
    return Exchange("yes_no", q, ans, {"arith_plus": f"{a},{b}"})


def compare(p: Picker) -> Exchange:
    pair = p.pick("compare", [(f"{x},{y}", x, y) for x in range(1, 21) for y in range(1, 21) if x != y])
    a, b = pair[1:]
    big = p.rng.random() < 0.6
    A, B = num_words(a), num_words(b)
    if big:
        q = p.choice([f"which is bigger, {A} or {B}", f"which number is larger, {A} or {B}", f"is {A} bigger than {B}"])
        hi, lo = (A, B) if a > b else (B, A)
        ans = f"{hi} is bigger than {lo}."
        if q.startswith("is "):
            ans = ("yes, " if a > b else "no, ") + ans
    else:
        q = p.choice([f"which is smaller, {A} or {B}", f"which number is less, {A} or {B}"])
        lo, hi = (A, B) if a < b else (B, A)
        ans = f"{lo} is smaller than {hi}."
    return Exchange("compare", q, ans, {"compare": f"{a},{b}"})


def neighbour_number(p: Picker) -> Exchange:
    n = p.pick("number", list(range(1, 100)))
    N = num_words(n)
    if p.rng.random() < 0.5:
        q = p.choice([f"what comes after {N}", f"what number comes after {N}", f"what is {N} plus one"])
        ans = f"{num_words(n + 1)} comes after {N}." if "plus" not in q else f"{N} plus one is {num_words(n + 1)}."
        return Exchange("number_after", q, ans, {"number": n})
    q = p.choice([f"what comes before {N}", f"what number comes before {N}"])
    return Exchange("number_before", q, f"{num_words(n - 1)} comes before {N}.", {"number": n})


def double_half(p: Picker) -> Exchange:
    n = p.pick("number", list(range(1, 51)))
    N = num_words(n)
    if n % 2 == 0 and p.rng.random() < 0.5:
        q = p.choice([f"what is half of {N}", f"what's half of {N}", f"how much is half of {N}"])
        return Exchange("half", q, f"half of {N} is {num_words(n // 2)}.", {"number": n})
    q = p.choice([f"what is double {N}", f"what's {N} doubled", f"what is twice {N}"])
    return Exchange("double", q, f"double {N} is {num_words(2 * n)}.", {"number": n})


def days_months(p: Picker) -> Exchange:
    if p.rng.random() < 0.5:
        i = DAYS.index(p.pick("day", DAYS))
        d = DAYS[i]
        if p.rng.random() < 0.5:
            q = p.choice([f"what day comes after {d}", f"what's the day after {d}"])
            return Exchange("day_after", q, f"{DAYS[(i + 1) % 7]} comes after {d}.", {"day": d})
        q = p.choice([f"what day comes before {d}", f"what's the day before {d}"])
        return Exchange("day_before", q, f"{DAYS[(i - 1) % 7]} comes before {d}.", {"day": d})
    m = p.pick("month", MONTHS)
    i = MONTHS.index(m)
    q = p.choice([f"what month comes after {m}", f"which month is after {m}"])
    return Exchange("month_after", q, f"{MONTHS[(i + 1) % 12]} comes after {m}.", {"month": m})


def opposite(p: Picker) -> Exchange:
    pair = p.pick("opposite", OPPOSITES + [(b, a) for a, b in OPPOSITES])
    w, o = pair
    q = p.choice([f"what is the opposite of {w}", f"what's the opposite of {w}", f"tell me the opposite of {w}"])
    return Exchange("opposite", q, f"the opposite of {w} is {o}.", {"opposite": w})


def plural(p: Picker) -> Exchange:
    w, pl = p.pick("plural", PLURALS)
    q = p.choice([f"what is the plural of {w}", f"what's the plural of {w}", f"what do you call more than one {w}"])
    return Exchange("plural", q, f"the plural of {w} is {pl}.", {"plural": w})


def rhyme(p: Picker) -> Exchange:
    w, r = p.pick("rhyme", RHYMES)
    q = p.choice([f"what rhymes with {w}", f"tell me a word that rhymes with {w}", f"can you rhyme with {w}"])
    return Exchange("rhyme", q, f"{r} rhymes with {w}.", {"rhyme": w})


def joke(p: Picker) -> Exchange:
    topic = p.choice(list(JOKES))
    if topic is None:
        q = p.choice(["tell me a joke", "do you know any jokes", "make me laugh", "say something funny",
                      "can you tell me a joke"])
    else:
        q = p.choice([f"tell me a joke about {topic}", f"do you know a joke about {topic}",
                      f"tell me something funny about {topic}"])
    return Exchange("joke", q, JOKES[topic])


def repeat(p: Picker) -> Exchange:
    phrase = p.pick("phrase", REPEAT_PHRASES)
    q = p.choice([f"repeat after me, {phrase}", f"say {phrase}", f"can you say {phrase}",
                  f"please repeat this, {phrase}"])
    return Exchange("repeat", q, phrase + ".", {"phrase": phrase})


_SMALL_TALK = [
    ("how_are_you", ["how are you", "how are you doing", "how's it going", "how are you today", "are you okay"],
     "i'm doing well, thanks for asking."),
    ("capabilities", ["what can you do", "what are you good at", "how can you help me", "what do you know"],
     "i can do simple math, spell words, count, share facts about countries and animals, and tell jokes."),
    ("is_robot", ["are you a robot", "are you a person", "are you human", "are you a real person"],
     "i'm a computer program, not a person."),
    ("thanks", ["thank you", "thanks", "thanks a lot", "thank you so much", "that's helpful, thanks"],
     "you're welcome!"),
    ("sorry", ["sorry", "sorry about that", "oops, my mistake"], "no problem at all."),
    ("hold_on", ["hold on a second", "give me a moment", "wait a minute", "one second please"],
     "sure, take your time."),
    ("bored", ["i'm bored", "i am so bored", "i have nothing to do"], "how about a joke? just ask me for one."),
    ("tired", ["i'm tired", "i'm so sleepy", "i didn't sleep well"], "maybe you should get some rest."),
    ("happy", ["i'm happy today", "i feel great", "today was a good day"], "that's great to hear!"),
    ("sad", ["i'm sad", "i feel a bit down", "today was a bad day"],
     "i'm sorry to hear that. i hope your day gets better."),
    ("compliment", ["you're funny", "you're smart", "you're really helpful", "i like you"],
     "thank you, that's kind of you."),
    ("age", ["how old are you", "when were you born"], "i'm quite new. i was made this year."),
    ("location", ["where are you", "where do you live"], "i live inside this computer."),
    ("out_of_scope", ["what's the meaning of life", "who will win the next election", "what's the weather like",
                      "what time is it", "can you drive me to work", "what's the price of gold",
                      "can you book me a flight"], "sorry, i can't help with that. i'm only a small model."),
    ("dont_understand", ["blah blah blah", "asdf", "la la la", "hmm, banana telephone"],
     "sorry, i didn't understand that. could you say it again?"),
    ("agree", ["that's cool", "nice", "interesting", "oh really", "wow"], "i think so too!"),
]


def small_talk(p: Picker) -> Exchange:
    intent, qs, a = _SMALL_TALK[int(p.rng.integers(len(_SMALL_TALK)))]
    return Exchange(intent, p.choice(qs), a)


# ---------------------------------------------------------------------------------------------------------------
# real human chat turns (chitchat-dataset)

_CONTRACTIONS = {"im": "i'm", "dont": "don't", "cant": "can't", "didnt": "didn't", "doesnt": "doesn't",
                 "isnt": "isn't", "wasnt": "wasn't", "ive": "i've", "youre": "you're", "thats": "that's",
                 "whats": "what's", "its": "it's", "id": "i'd", "ill": "i'll", "wont": "won't", "u": "you",
                 "ur": "your", "r": "are", "lol": "", "haha": "", "hahaha": "", "lmao": "", "omg": "oh my gosh",
                 "gonna": "going to", "wanna": "want to", "ya": "you", "yea": "yeah", "ok": "okay", "k": "okay"}


def clean_chat(text: str) -> str | None:
    """Lower-case, ASCII letters and basic punctuation, common shorthand expanded; None if unusable."""
    t = text.strip().lower()
    if not t or re.search(r"[0-9@#/\\*_<>=\[\]{}|~`^$%&+]|http|www|\.com", t):
        return None
    t = t.replace("’", "'").replace("‘", "'").replace("“", "").replace("”", "")
    if re.search(r"[^a-z ,.!?'\-]", t):
        return None
    words = []
    for w in t.split():
        core = w.strip(",.!?")
        rep = _CONTRACTIONS.get(core)
        if rep is not None:
            w = w.replace(core, rep) if rep else ""
        if w:
            words.append(w)
    t = " ".join(words)
    t = re.sub(r"([!?.,])\1+", r"\1", t)
    t = re.sub(r"\s+([,.!?])", r"\1", t).lstrip(" ,.!?'-").rstrip(" ,")
    if not re.search(r"[a-z]", t):
        return None
    if not re.search(r"[.!?]$", t):
        t += "."
    return t


@functools.lru_cache(maxsize=1)
def chat_pairs() -> tuple[tuple[str, str, str], ...]:
    """(conversation id, user message, agent reply) from chitchat-dataset: a short message and the first short
    message of the other person's next turn. One fixed reply per distinct message, so the answer is a function
    of the question. Empty if the package is missing."""
    try:
        import chitchat_dataset
    except ImportError:
        return ()
    data = chitchat_dataset.Dataset()
    reserved = _template_questions()
    seen: dict[str, tuple[str, str, str]] = {}
    for cid in sorted(data):
        turns = data[cid]["messages"]
        for prev, nxt in zip(turns, turns[1:]):
            if not prev or not nxt or prev[-1]["sender"] == nxt[0]["sender"]:
                continue
            q, a = clean_chat(prev[-1]["text"]), clean_chat(nxt[0]["text"])
            if not q or not a:
                continue
            nq, na = len(q.split()), len(a.split())
            if not (3 <= nq <= 14 and 2 <= na <= 18) or len(re.findall(r"[.!?]", a)) > 2:
                continue
            key = q.rstrip(".!?")
            if key not in seen and key not in reserved:
                seen[key] = (cid, q, a)
    return tuple(seen[k] for k in sorted(seen))


def _template_questions() -> set[str]:
    """Questions of the fixed-answer intents, so a chat message never gets a second answer."""
    out: set[str] = set()
    for name in ("greeting", "farewell", "agent_name", "favourite", "small_talk", "joke"):
        p = Picker(np.random.default_rng(0), "train")
        for _ in range(3000):
            out.add(INTENTS[name](p).question)
    return out


def chat(p: Picker) -> Exchange:
    pairs = chat_pairs()
    if not pairs:
        return small_talk(p)
    # draw by conversation id split: pick a random pair until its conversation belongs to the wanted pool
    want_own = p.split != "train" and p.rng.random() < p.share
    for _ in range(200):
        cid, q, a = pairs[int(p.rng.integers(len(pairs)))]
        s = slot_split("chat", cid)
        if (want_own and s == p.split) or (not want_own and s == "train"):
            return Exchange("chat", q.rstrip("."), a, {"chat": cid})
    cid, q, a = pairs[0]
    return Exchange("chat", q.rstrip("."), a, {"chat": cid})


# ---------------------------------------------------------------------------------------------------------------
# registry

INTENTS = {
    "greeting": greeting, "farewell": farewell, "name_intro": name_intro, "agent_name": agent_name,
    "arithmetic": arithmetic, "counting": counting, "spelling": spelling, "letters": letters,
    "colour": colour_of, "favourite": favourite, "capital": capital, "continent": continent,
    "language": language, "animal_sound": animal_sound, "animal_legs": animal_legs, "animal_class": animal_class,
    "animal_baby": animal_baby, "yes_no": yes_no, "compare": compare, "neighbour_number": neighbour_number,
    "double_half": double_half, "days_months": days_months, "opposite": opposite, "plural": plural,
    "rhyme": rhyme, "joke": joke, "repeat": repeat, "small_talk": small_talk, "chat": chat,
}

DEFAULT_WEIGHTS = {name: 1.0 for name in INTENTS} | {"chat": 4.0, "small_talk": 2.0, "arithmetic": 2.0,
                                                      "greeting": 0.5, "farewell": 0.5}

# filler heads for long user turns (the agent may backchannel in the gap after them)
LONG_TURN_HEADS = ["so, i have a question for you", "okay, so i was thinking about something earlier",
                   "i've been wondering about this all day", "my friend asked me this yesterday and i didn't know",
                   "this might be a silly question", "i was reading a book with my kids last night",
                   "alright, here's something i always forget", "so we were talking about this at dinner",
                   "let me ask you something", "i'm helping my son with his homework"]
PAUSE_FILLERS = ["so, um", "let me see", "hmm, okay", "uh, wait", "so, i was wondering", "okay, um"]
USER_BACKCHANNELS = [("uh-huh", "uh huh"), ("yeah", "yeah"), ("okay", "okay"), ("right", "right"),
                     ("i see", "i see"), ("mm", "mm"), ("sure", "sure"), ("got it", "got it")]
AGENT_BACKCHANNELS = [("uh-huh.", "uh-huh."), ("yeah.", "yeah."), ("okay.", "okay."), ("right.", "right."),
                      ("i see.", "i see."), ("hmm.", "hmm.")]
INTERRUPT_HEADS = ["", "", "sorry, ", "wait, ", "actually, ", "hang on, ", "oh, ", "stop, "]


def make_exchange(p: Picker, weights: dict[str, float] | None = None) -> Exchange:
    weights = weights or DEFAULT_WEIGHTS
    names = [n for n in INTENTS if weights.get(n, 0) > 0]
    w = np.array([weights[n] for n in names], dtype=float)
    name = names[int(p.rng.choice(len(names), p=w / w.sum()))]
    return INTENTS[name](p)
