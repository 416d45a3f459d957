"""Word count: count every word that streams in, and report each new total.

Lines of text arrive on the TCP source "Split and Count" (each line is one
u32-big-endian-length frame). Each line is split into lowercase words with the
punctuation stripped, the words are partitioned by word, and a state
computation keeps one running total per word. Every time a word is counted,
the sink receives ``"word => N\\n"``.

Run it (see README.md)::

    wallaroo-run --application-module word_count \\
        --in 'Split and Count@127.0.0.1:7010' --out 127.0.0.1:7002
"""
import string

import wallaroo

PUNCTUATION = string.punctuation


def application_setup(args):
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    lines = wallaroo.source("Split and Count",
                            wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode_line))

    pipeline = (lines
                .to(split)
                .key_by(extract_word)
                .to(count_word)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_word_count)))

    return wallaroo.build_application("Word Count Application", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_line(payload):
    return payload.decode("utf-8")


@wallaroo.computation_multi(name="split into words")
def split(line):
    words = []
    for token in line.lower().split():
        word = token.strip(PUNCTUATION)
        if word:
            words.append(word)
    return words


@wallaroo.key_extractor
def extract_word(word):
    return word


class WordTotal(object):
    """The state kept for one word (one instance per key)."""

    def __init__(self):
        self.count = 0


class WordCount(object):
    """What the state computation emits: a word and its total so far."""

    def __init__(self, word, count):
        self.word = word
        self.count = count

    def __repr__(self):
        return "WordCount({!r}, {!r})".format(self.word, self.count)


@wallaroo.state_computation(name="count word", state=WordTotal)
def count_word(word, word_total):
    word_total.count += 1
    return WordCount(word, word_total.count)


@wallaroo.encoder
def encode_word_count(word_count):
    return "{} => {}\n".format(word_count.word, word_count.count)
