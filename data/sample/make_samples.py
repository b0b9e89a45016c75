"""Regenerate the bundled sample data (deterministic for a given Python version).

    python data/sample/make_samples.py

sample_text.jsonl    docstrings of Python standard-library modules, classes and
                     functions (Python Software Foundation License), one per line.
alpaca_sample.jsonl  instruction / input / output / text rows generated from
                     templates written for this project (arithmetic, unit
                     conversion, string and list tasks, a small glossary).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from mixexp.data.handlers import PROMPT_TEMPLATES  # noqa: E402

MODULES = """
abc argparse ast asyncio base64 bisect calendar cmd codecs collections colorsys
concurrent.futures configparser contextlib copy csv dataclasses datetime decimal
difflib dis doctest email enum fileinput fnmatch fractions ftplib functools getopt
gettext glob gzip hashlib heapq hmac html http.client http.server imaplib inspect
io ipaddress itertools json logging mailbox mimetypes multiprocessing netrc
numbers operator optparse os pathlib pdb pickle pickletools pkgutil platform
plistlib poplib pprint profile pydoc queue quopri random re reprlib sched secrets
selectors shelve shlex shutil smtplib socket socketserver sqlite3 statistics
string struct subprocess tarfile tempfile textwrap threading timeit tokenize
trace traceback turtle types typing unittest urllib.parse urllib.request uuid
warnings wave weakref webbrowser xml.dom.minidom xml.etree.ElementTree zipfile
zipimport
""".split()

TARGET_BYTES = 560_000
MIN_CHARS = 250


def _prose_like(text: str) -> bool:
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters / max(len(text), 1) > 0.86 and text.count(">>>") < 3


def harvest_docstrings() -> list[str]:
    seen: set[str] = set()
    docs: list[str] = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:
            continue
        objects = [module]
        for attr in sorted(vars(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr)
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                objects.append(obj)
                if inspect.isclass(obj):
                    for meth in sorted(vars(obj)):
                        if not meth.startswith("_") and inspect.isfunction(vars(obj)[meth]):
                            objects.append(vars(obj)[meth])
        for obj in objects:
            doc = inspect.getdoc(obj)
            if not doc or len(doc) < MIN_CHARS or doc in seen or not _prose_like(doc):
                continue
            seen.add(doc)
            docs.append(doc)
    return docs


# --- instruction data --------------------------------------------------------------

GLOSSARY = {
    "tokenizer": "A tokenizer splits text into units called tokens and maps each token to an integer id that a language model can read.",
    "mixture of experts": "A mixture of experts is a layer made of several feed-forward networks, the experts, and a router that sends each token to a few of them, so the model has many parameters but uses only some of them per token.",
    "router": "In a mixture-of-experts layer, the router is a small linear layer that scores every expert for a token and picks the top-scoring ones to process it.",
    "tensor parallelism": "Tensor parallelism splits the weight matrices of a layer across devices, so each device computes part of every matrix multiplication and the partial results are combined with collective communication.",
    "pipeline parallelism": "Pipeline parallelism places consecutive groups of layers on different devices and streams micro-batches through them, so every device works on a different micro-batch at the same time.",
    "data parallelism": "Data parallelism keeps a full copy of the model on each group of devices, gives each copy a different slice of the batch, and averages the gradients before the update.",
    "context parallelism": "Context parallelism splits a long sequence across devices; attention then exchanges keys and values between devices so every token can still attend to the whole context.",
    "expert parallelism": "Expert parallelism places different experts of a mixture-of-experts layer on different devices and moves tokens to the device holding their expert with all-to-all communication.",
    "gradient clipping": "Gradient clipping rescales the gradients when their overall norm is larger than a threshold, which keeps a single bad batch from making a huge update.",
    "learning rate warmup": "Learning rate warmup starts training with a small learning rate and raises it over the first steps, which keeps early updates stable while the optimizer statistics are still poor.",
    "cosine decay": "Cosine decay lowers the learning rate from its peak to a minimum following half a cosine wave over the course of training.",
    "weight decay": "Weight decay shrinks the weights a little at every step, which discourages large weights and acts as a regularizer.",
    "bf16": "bf16, or bfloat16, is a 16-bit floating-point format with the same exponent range as 32-bit floats but fewer mantissa bits, which makes mixed-precision training stable without loss scaling.",
    "embedding": "An embedding is a learned vector that represents a token; the embedding table maps each token id to its vector.",
    "attention": "Attention lets each token build its representation from a weighted mix of the other tokens, with weights computed from how well its query matches their keys.",
    "grouped-query attention": "Grouped-query attention shares each key and value head among several query heads, which shrinks the key-value cache while keeping most of the quality of full multi-head attention.",
    "rotary position embedding": "Rotary position embedding encodes the position of a token by rotating pairs of query and key features by an angle that grows with the position.",
    "RMSNorm": "RMSNorm normalizes a vector by dividing it by the root mean square of its entries and multiplying by a learned scale, without subtracting the mean.",
    "SwiGLU": "SwiGLU is a feed-forward block that multiplies a SiLU-activated projection of the input with a second linear projection before projecting back down.",
    "perplexity": "Perplexity is the exponential of the average negative log-likelihood per token; lower perplexity means the model predicts the text better.",
    "checkpoint": "A checkpoint is a saved copy of the model weights, optimizer state and training progress from which training or inference can resume.",
    "micro-batch": "A micro-batch is the slice of a batch that one device processes in a single forward and backward pass; several micro-batches are accumulated into one optimizer step.",
    "global batch size": "The global batch size is the number of sequences that contribute to one optimizer step across all data-parallel replicas and accumulation steps.",
    "throughput": "Throughput is the amount of work done per unit of time; in language model training it is usually measured in tokens per second.",
    "model FLOPs utilization": "Model FLOPs utilization is the ratio between the floating-point operations a training run actually performs per second for the model and the peak the hardware could deliver.",
    "sequence packing": "Sequence packing places several short training examples into one fixed-length sequence so that less of the sequence is spent on padding.",
    "loss mask": "A loss mask marks which positions contribute to the training loss; for instruction tuning it hides the prompt so the model only learns the response.",
    "end-of-document token": "An end-of-document token is appended after each document so the model learns where one text stops and the next begins.",
    "indexed dataset": "An indexed dataset stores token ids in one binary file and the length and offset of every sequence in an index file, so any sequence can be read without scanning the data.",
    "all-to-all": "All-to-all is a collective operation in which every process sends a different piece of data to every other process.",
    "all-reduce": "All-reduce is a collective operation that combines a value from every process, for example by summing, and gives the result to all of them.",
    "sharding": "Sharding splits a large object such as a weight matrix, an optimizer state or a dataset into pieces that are stored on different devices.",
    "activation checkpointing": "Activation checkpointing saves memory by discarding some intermediate activations in the forward pass and recomputing them during the backward pass.",
    "distributed optimizer": "A distributed optimizer shards the optimizer state across data-parallel ranks, so each rank updates and stores only its part of the parameters.",
    "overfitting": "Overfitting happens when a model learns the training data so closely that it performs worse on new data.",
    "validation set": "A validation set is held-out data that is not used for training and is evaluated periodically to estimate how well the model generalizes.",
    "fine-tuning": "Fine-tuning continues the training of a pretrained model on a smaller, task-specific dataset.",
    "instruction tuning": "Instruction tuning fine-tunes a language model on pairs of instructions and good responses so it learns to follow requests.",
    "greedy decoding": "Greedy decoding generates text by always choosing the most likely next token.",
    "temperature": "Temperature divides the logits before sampling; a low temperature makes the output more predictable and a high one makes it more varied.",
}

WORDS = """apple river mountain window garden planet silver thunder lantern pencil
orange bicycle harbor meadow candle violin rocket castle forest blanket marble
compass journey puzzle feather whisper crystal ladder tunnel quartz velvet""".split()


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    name = {"+": "sum", "-": "difference", "*": "product"}[op]
    style = rng.randrange(3)
    if style == 0:
        return f"What is {a} {op} {b}?", "", f"{a} {op} {b} = {value}."
    if style == 1:
        return f"Calculate the {name} of the two numbers.", f"{a}, {b}", f"The {name} of {a} and {b} is {value}."
    return "Solve the arithmetic problem.", f"{a} {op} {b}", str(value)


def _conversion(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        km = rng.randint(1, 500)
        return "Convert the distance from kilometres to metres.", f"{km} km", f"{km} km is {km * 1000:,} metres."
    if kind == 1:
        h = rng.randint(1, 72)
        return f"How many minutes are there in {h} hours?", "", f"There are {h * 60:,} minutes in {h} hours."
    if kind == 2:
        c = rng.randint(-40, 120)
        f = c * 9 / 5 + 32
        return "Convert the temperature from Celsius to Fahrenheit.", f"{c} °C", f"{c} °C is {f:g} °F."
    kg = rng.randint(1, 300)
    return "Convert kilograms to grams.", f"{kg} kg", f"{kg} kg is {kg * 1000:,} grams."


def _string_task(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    kind = rng.randrange(4)
    if kind == 0:
        return "Reverse the letters of the word.", word, word[::-1]
    if kind == 1:
        letter = rng.choice(sorted(set(word)))
        n = word.count(letter)
        return (f"How many times does the letter '{letter}' appear in the word?", word,
                f"The letter '{letter}' appears {n} time{'s' if n != 1 else ''} in \"{word}\".")
    if kind == 2:
        return "Write the word in capital letters.", word, word.upper()
    words = rng.sample(WORDS, 4)
    return "Sort these words alphabetically.", ", ".join(words), ", ".join(sorted(words))


def _list_task(rng: random.Random) -> tuple[str, str, str]:
    nums = [rng.randint(-50, 200) for _ in range(rng.randint(4, 8))]
    text = ", ".join(map(str, nums))
    kind = rng.randrange(4)
    if kind == 0:
        return "Sort the numbers in ascending order.", text, ", ".join(map(str, sorted(nums)))
    if kind == 1:
        return "Find the largest number in the list.", text, f"The largest number is {max(nums)}."
    if kind == 2:
        return "Add up the numbers.", text, f"The total is {sum(nums)}."
    evens = [n for n in nums if n % 2 == 0]
    return ("List the even numbers.", text,
            ", ".join(map(str, evens)) if evens else "There are no even numbers in the list.")


def _definition(rng: random.Random) -> tuple[str, str, str]:
    term = rng.choice(sorted(GLOSSARY))
    style = rng.randrange(3)
    if style == 0:
        return f"What is {term}?", "", GLOSSARY[term]
    if style == 1:
        return "Explain the term in one or two sentences.", term, GLOSSARY[term]
    return f"Define \"{term}\" for a machine learning engineer.", "", GLOSSARY[term]


def make_alpaca(n: int = 400, seed: int = 1234) -> list[dict]:
    rng = random.Random(seed)
    makers = [_arithmetic, _conversion, _string_task, _list_task, _definition]
    template = PROMPT_TEMPLATES["alpaca"]
    rows = []
    for i in range(n):
        instruction, input_text, output = makers[i % len(makers)](rng)
        text = template.render(instruction, input_text) + output
        rows.append({"instruction": instruction, "input": input_text, "output": output, "text": text})
    return rows


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    docs = harvest_docstrings()
    rows, size = [], 0
    for doc in docs:
        line = json.dumps({"text": doc}, ensure_ascii=False)
        if size + len(line) > TARGET_BYTES:
            break
        rows.append({"text": doc})
        size += len(line) + 1
    _write_jsonl(os.path.join(HERE, "sample_text.jsonl"), rows)
    alpaca = make_alpaca()
    _write_jsonl(os.path.join(HERE, "alpaca_sample.jsonl"), alpaca)
    print(f"sample_text.jsonl: {len(rows)} documents, {size:,} bytes (of {len(docs)} harvested)")
    print(f"alpaca_sample.jsonl: {len(alpaca)} rows")


if __name__ == "__main__":
    main()
