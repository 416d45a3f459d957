"""Deterministic vote generator for the alphabet example.

Writes ``--count`` vote messages as binary frames (u32 BE length = 5, one
letter byte, u32 BE votes), ready for ``wallaroo send --binary``. The same
``--seed`` always gives the same file.

    python gen_votes.py --count 1000 --seed 42 --output votes.msg
"""
import argparse
import random
import string
import struct

FRAME = struct.Struct(">IsI")   # length header, letter, votes
PAYLOAD_SIZE = 5


def generate(count=1000, seed=42):
    """Return ``count`` (letter, votes) pairs: letters a-z, votes 1..9999."""
    rng = random.Random(seed)
    return [(rng.choice(string.ascii_lowercase), rng.randint(1, 9999)) for _ in range(count)]


def to_frames(pairs):
    """The wire form of ``pairs``: one frame per vote."""
    return b"".join(FRAME.pack(PAYLOAD_SIZE, letter.encode("ascii"), votes) for letter, votes in pairs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="number of messages (default 1000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--output", default="votes.msg", help="file to write (default votes.msg)")
    options = parser.parse_args(argv)
    with open(options.output, "wb") as out:
        out.write(to_frames(generate(options.count, options.seed)))
    print("wrote {} messages to {}".format(options.count, options.output))


if __name__ == "__main__":
    main()
