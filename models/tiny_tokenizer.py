"""A tiny sentencepiece model trained locally, for tests and the `wan-tiny` dev model.

`build_tiny_tokenizer(folder)` writes `folder/spiece.model` (HF layout, so `UMT5Tokenizer(folder)`
and transformers' `T5Tokenizer(vocab_file=...)` both read it) with T5's special ids:
pad 0, eos 1, unk 2, no bos. Training is single-threaded on a fixed built-in text: deterministic.
"""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm

from models.tokenizer import SPIECE_NAME

# A few hundred words of plain prompt-like English, written for this file.
CORPUS = """
A red fox runs across a snowy field at dawn while soft light spreads over the quiet hills.
The camera slowly pans from left to right, following a small boat on a calm blue lake.
An old man in a brown coat reads a newspaper on a wooden bench in a busy city park.
Two cats play with a ball of yarn on a warm kitchen floor, sunlight coming through the window.
A drone shot of a winding mountain road, cars moving slowly under heavy grey clouds.
Close up of raindrops falling on green leaves, each drop shining like a tiny glass bead.
A young woman dances in the rain on a street lit by neon signs, her red umbrella spinning.
The ocean waves crash against black rocks, white foam rising high into the cold air.
A golden retriever jumps into a swimming pool and swims toward a yellow tennis ball.
Fireworks explode over a river at night, colors reflecting on the dark moving water.
A chef slices fresh vegetables on a cutting board, steam rising from a pot behind him.
Children fly bright kites on a windy beach while seagulls circle above the sand dunes.
A train travels through a forest in autumn, orange and yellow leaves drifting past.
The time lapse shows clouds rolling over a desert canyon as the sun sets in deep red.
An astronaut floats inside a space station, looking out at the curve of the blue earth.
A hummingbird hovers near a purple flower, its wings moving faster than the eye can see.
Snow falls gently on a small village with warm lights glowing in every window.
A horse gallops along the shore, water splashing under its hooves in slow motion.
The city skyline at night, traffic lights streaming like rivers of gold and silver.
A painter adds the final strokes to a portrait in a studio full of canvas and brushes.
Cinematic shot, high quality, detailed, realistic lighting, shallow depth of field.
Low quality, blurry, distorted faces, extra fingers, static frame, overexposed, watermark.
The robot walks through an abandoned factory, dust floating in beams of morning light.
A cup of coffee on a table, steam curling upward as someone turns the pages of a book.
Leaves of a tall tree sway in the wind while birds sing from the highest branches.
A surfer rides a huge wave, the camera following closely from the side in one long take.
Many people walk across a wide square, pigeons taking off as a bell begins to ring.
A candle flickers in a dark room and shadows move slowly across the stone walls.
Mountains covered with snow rise above a green valley where a river bends and shines.
A butterfly lands on the hand of a smiling girl who stands in a field of sunflowers.
Heavy machines build a bridge over the harbor while ships pass beneath in the fog.
The panda eats bamboo in a quiet forest, then rolls onto its back and looks at the sky.
Quick zebras vex jumpy wolves near Xian, Kyoto, Oslo, Vienna, Ghent and Utah: 0 1 2 3 4 5 6 7 8 9, "yes" or (no)? It's 100% right; #1 @home!
Extra signs for coverage: [x] {y} <z> a+b=c a*b a/b a-b a_b a|b ~a ^b $5 & more.
""".strip()


def build_tiny_tokenizer(folder: str | Path, vocab_size: int = 1000) -> Path:
    """Train a unigram sentencepiece model on `CORPUS`; write `folder/spiece.model`, return its path.

    `vocab_size` is an upper bound: the small text may support fewer pieces (the limit is soft).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(CORPUS.splitlines()),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    out = folder / SPIECE_NAME
    out.write_bytes(model.getvalue())
    return out
