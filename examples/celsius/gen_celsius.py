"""Deterministic temperature generator for the celsius example.

Writes ``--count`` readings as binary frames (u32 BE length = 4, then a
big-endian f32 in degrees Celsius between -60 and 60), ready for
``wallaroo send --binary``. The same ``--seed`` always gives the same file.

    python gen_celsius.py --count 1000 --seed 7 --output celsius.msg
"""
import argparse
import random
import struct

FRAME = struct.Struct(">If")


def generate(count=1000, seed=7):
    """Return ``count`` readings, already rounded to f32 precision."""
    rng = random.Random(seed)
    readings = []
    for _ in range(count):
        value = round(rng.uniform(-60.0, 60.0), 2)
        # what the application decodes: the nearest 32-bit float
        readings.append(struct.unpack(">f", struct.pack(">f", value))[0])
    return readings


def to_frames(readings):
    """The wire form of ``readings``: one frame per reading."""
    return b"".join(FRAME.pack(4, value) for value in readings)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="number of readings (default 1000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--output", default="celsius.msg", help="file to write (default celsius.msg)")
    options = parser.parse_args(argv)
    with open(options.output, "wb") as out:
        out.write(to_frames(generate(options.count, options.seed)))
    print("wrote {} readings to {}".format(options.count, options.output))


if __name__ == "__main__":
    main()
