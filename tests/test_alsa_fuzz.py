"""Garbage in /proc/asound never raises: hypothesis on the cards parser and the whole collector."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.alsa import Alsa, parse_cards
from evo_agent.hostroot import ReplayHost

REAL = (" 0 [PCH            ]: HDA-Intel - HDA Intel PCH\n"
        "                      HDA Intel PCH at 0xf4230000 irq 42\n"
        "29 [ThinkPadEC     ]: ThinkPad EC - ThinkPad Console Audio Control\n"
        "                      ThinkPad Console Audio Control at EC reg 0x30, fw unknown\n")

_card_line = st.builds(
    lambda n, i, d, s: f"{n:>2} [{i:<15}]: {d} - {s}",
    st.integers(min_value=0, max_value=10**7), st.text(max_size=20), st.text(max_size=20),
    st.text(max_size=40),
)
_lines = st.lists(st.one_of(_card_line, st.text(max_size=60),
                            st.sampled_from(["", " ", "--- no soundcards ---", "\t", "]:", "[",
                                             " 0 [", " 1 []:", "99999999999999999999 [x]: a - b",
                                             "                      long name"])),
                  max_size=30)


def _check(cards: list[dict[str, object]]) -> None:
    seen = set()
    for card in cards:
        assert isinstance(card["card"], int) and 0 <= card["card"] <= 255
        assert card["card"] not in seen
        seen.add(card["card"])
        for key in ("id", "alsa_driver", "name", "long_name"):
            assert card[key] is None or (isinstance(card[key], str) and card[key])


@settings(max_examples=500, deadline=None)
@given(lines=_lines)
def test_fuzz_parse_cards_structured(lines: list[str]) -> None:
    """Card-like lines mixed with junk: a list of well-typed cards, never an exception."""
    _check(parse_cards("\n".join(lines)))


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=400))
def test_fuzz_parse_cards_any_text(text: str) -> None:
    """Any text at all."""
    _check(parse_cards(text))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cards=st.binary(max_size=300) | st.just(REAL.encode()),
       card_id=st.binary(max_size=30), usbid=st.binary(max_size=20),
       prefix=st.binary(max_size=40))
def test_fuzz_collector_on_garbage_files(tmp_path_factory: pytest.TempPathFactory, cards: bytes,
                                         card_id: bytes, usbid: bytes, prefix: bytes) -> None:
    """Random bytes in cards, cardN/id and cardN/usbid: the collector returns cards or []."""
    root = tmp_path_factory.mktemp("asound")
    asound = root / "proc/asound"
    for n in (0, 29):
        (asound / f"card{n}").mkdir(parents=True)
        (asound / f"card{n}/id").write_bytes(card_id)
        (asound / f"card{n}/usbid").write_bytes(usbid)
    (asound / "cards").write_bytes(prefix + cards)
    result = Alsa().collect(ReplayHost(root))
    for card in result["cards"]:
        assert card["usb_id"] is None or len(card["usb_id"]) == 9
        assert card["bus"] in (None, "usb")  # no sysfs in this tree


# -- edge cases, pinned (fuzzing found no crash in this parser; these fix the chosen behaviour) --
def test_regression_huge_card_index_is_skipped() -> None:
    """An index past the kernel's 256 cards is garbage, not a card (no overflow, no entry)."""
    assert parse_cards("99999999999999999999 [x]: a - b\n 0 [ok]: d - n\n")[0]["card"] == 0


def test_regression_duplicate_index_keeps_the_first() -> None:
    """A repeated index (a truncated and re-read file) does not give two cards."""
    cards = parse_cards(" 0 [A]: d - first\n   long A\n 0 [B]: d - second\n   long B\n")
    assert [(c["id"], c["name"], c["long_name"]) for c in cards] == [("A", "first", "long A")]


def test_regression_card_line_without_separator() -> None:
    """No " - " between driver and name: the driver is kept, the name is None."""
    (card,) = parse_cards(" 3 [X]: lonely\n")
    assert (card["alsa_driver"], card["name"]) == ("lonely", None)


def test_regression_empty_id_and_empty_fields() -> None:
    """ "[]:" with nothing after: every text field is None, not an empty string."""
    (card,) = parse_cards(" 1 []: \n")
    assert (card["id"], card["alsa_driver"], card["name"], card["long_name"]) == (
        None, None, None, None)


def test_regression_replacement_characters_in_cards(tmp_path: Path) -> None:
    """Non-UTF-8 bytes in a short name decode to U+FFFD and do not stop the collector."""
    (tmp_path / "proc/asound").mkdir(parents=True)
    (tmp_path / "proc/asound/cards").write_bytes(
        b" 0 [Audio          ]: USB-Audio - DAC \xff\xfe Pro\n      long\n")
    (card,) = Alsa().collect(ReplayHost(tmp_path))["cards"]
    assert card["name"] == "DAC \ufffd\ufffd Pro"


def test_link_loop_in_sysfs_keeps_the_card(tmp_path: Path) -> None:
    """/sys/class/sound/card0 looping on itself (a damaged capture): the card stays, no device."""
    (tmp_path / "proc/asound").mkdir(parents=True)
    (tmp_path / "proc/asound/cards").write_text(REAL)
    cls = tmp_path / "sys/class/sound"
    cls.mkdir(parents=True)
    (cls / "card0").symlink_to("card0")
    cards = Alsa().collect(ReplayHost(tmp_path))["cards"]
    assert [(c["card"], c["id"], c["bus"]) for c in cards] == [(0, "PCH", None),
                                                              (29, "ThinkPadEC", None)]
