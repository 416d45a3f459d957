"""Alphabet: a running vote tally per letter.

Each message on the TCP source "Alphabet Votes" is a binary frame::

    u32 length (= 5, big-endian) | 1 byte letter (ASCII) | u32 votes (big-endian)

The votes are partitioned by letter and a state computation adds them up. For
every message the sink receives the new total of that letter as a line
``"letter => total\\n"``.

Run it (see README.md)::

    wallaroo-run --application-module alphabet \\
        --in 'Alphabet Votes@127.0.0.1:7010' --out 127.0.0.1:7002
"""
import struct

import wallaroo

VOTE_FORMAT = ">sI"


def application_setup(args):
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    votes = wallaroo.source("Alphabet Votes",
                            wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode_votes))

    pipeline = (votes
                .key_by(extract_letter)
                .to(add_votes)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_votes)))

    return wallaroo.build_application("Alphabet Popularity Contest", pipeline)


class Votes(object):
    """Votes for one letter; also what the state computation emits."""

    def __init__(self, letter, votes):
        self.letter = letter
        self.votes = votes

    def __repr__(self):
        return "Votes({!r}, {!r})".format(self.letter, self.votes)


class AllVotes(object):
    """The tally. With key_by(letter) each letter gets its own AllVotes."""

    def __init__(self):
        self.votes_by_letter = {}

    def update(self, votes):
        total = self.votes_by_letter.get(votes.letter, 0) + votes.votes
        self.votes_by_letter[votes.letter] = total

    def get_votes(self, letter):
        # Return a new object: emitted values must not be mutated later.
        return Votes(letter, self.votes_by_letter.get(letter, 0))


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_votes(payload):
    letter, votes = struct.unpack(VOTE_FORMAT, payload)
    return Votes(letter.decode("ascii"), votes)


@wallaroo.key_extractor
def extract_letter(votes):
    return votes.letter


@wallaroo.state_computation(name="add votes", state=AllVotes)
def add_votes(votes, all_votes):
    all_votes.update(votes)
    return all_votes.get_votes(votes.letter)


@wallaroo.encoder
def encode_votes(votes):
    return "{} => {}\n".format(votes.letter, votes.votes).encode("ascii")
