"""Where one training step of the attention decoder spends its time: each part timed alone, forward + backward.

Parts, each a compiled function of its own with the real sizes (7x7x1280 grid, 512 units, embedding 256,
vocabulary 2532, 13 positions, the median Flickr8k caption with <start>): the image side (grid projection,
keys, initial state), the LSTM, the attention, the output projection with the loss, and the Python
input pipeline. Two layouts: the previous decoder's (64 captions, one image row per caption, additive
attention, logits at every position, float32) and today's (32 images x 5 captions, image side once per
image, dot-product attention, logits only at real positions, float32 and bfloat16).

    python benchmarks/profile_step.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

GRID, UNITS, EMBED, VOCAB, STEPS = (49, 1280), 512, 256, 2532, 13
REAL_FRACTION = 0.73  # real next tokens / padded positions in image-grouped Flickr8k batches (measured)


def parts(images: int, captions: int, additive: bool, packed: bool, dtype: str) -> dict:
    """name -> zero-argument compiled function running that part's forward and backward pass once."""
    import keras
    import tensorflow as tf
    from keras import layers

    tf.get_logger().setLevel("ERROR")  # each part is its own tf.function: retracing warnings are expected
    keras.config.set_dtype_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
    rng = np.random.default_rng(0)
    cells = tf.constant(rng.random((images, *GRID), dtype=np.float32))
    words = tf.constant(rng.random((captions, STEPS, EMBED * 2), dtype=np.float32))
    queries = tf.constant(rng.random((captions, STEPS, UNITS), dtype=np.float32))
    values_in = tf.constant(rng.random((images, GRID[0], UNITS), dtype=np.float32))
    out_rows = int(captions * STEPS * (REAL_FRACTION if packed else 1.0))
    hidden_in = tf.constant(rng.random((out_rows, UNITS), dtype=np.float32))
    targets = tf.constant(rng.integers(0, VOCAB, out_rows).astype(np.int32))

    values_dense, keys_dense = layers.Dense(UNITS, activation="relu"), layers.Dense(UNITS, use_bias=False)
    init_dense = layers.Dense(UNITS, activation="tanh")
    lstm = layers.LSTM(UNITS, return_sequences=True)
    query_dense, score_dense = layers.Dense(UNITS, use_bias=False), layers.Dense(1, use_bias=False)
    out_dense, logits_dense = layers.Dense(UNITS, activation="relu"), layers.Dense(VOCAB)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def timed(body, inputs):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss = tf.reduce_sum(tf.cast(body(), tf.float32))
            return tape.gradient(loss, inputs)

        return run

    def image_side():
        values = values_dense(cells)
        keys = keys_dense(values)
        state = init_dense(tf.reduce_mean(cells, axis=1))
        return tf.reduce_sum(keys) + tf.reduce_sum(state)

    def attention():
        keys = tf.repeat(values_in, captions // images, axis=0)
        q = query_dense(queries)
        if additive:
            scores = tf.squeeze(score_dense(tf.tanh(q[:, :, None, :] + keys[:, None, :, :])), -1)
        else:
            heads = 8
            qh = tf.transpose(tf.reshape(q, (captions, STEPS, heads, -1)), (0, 2, 1, 3))
            kh = tf.transpose(tf.reshape(keys, (captions, GRID[0], heads, -1)), (0, 2, 3, 1))
            scores = tf.matmul(qh, tf.cast(kh, qh.dtype)) / 8.0
        return tf.nn.softmax(scores)

    def output():
        return loss_fn(targets, tf.cast(logits_dense(out_dense(hidden_in)), tf.float32))

    return {
        "image side": timed(image_side, [cells]),
        "LSTM": timed(lambda: lstm(words), [words]),
        "attention": timed(attention, [queries, values_in]),
        "output projection + loss": timed(output, [hidden_in]),
    }


def input_pipeline(images: int, captions: int, repeats: int) -> float:
    """Seconds per batch of the Python side: gather the batch's feature rows (float16 -> float32) and tokens."""
    rng = np.random.default_rng(0)
    store = rng.random((6000, 7, 7, 1280), dtype=np.float32).astype(np.float16)
    tokens = rng.integers(0, VOCAB, (30000, 24)).astype(np.int32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rows = np.sort(rng.choice(6000, images, replace=False))
        np.asarray(store[rows], dtype=np.float32)
        tokens[rng.choice(30000, captions, replace=False)][:, :STEPS]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    layouts = {
        "previous: 64 captions, additive, float32": (64, 64, True, False, "float32"),
        "today: 32 images x 5, float32": (32, 160, False, True, "float32"),
        "today: 32 images x 5, bfloat16": (32, 160, False, True, "bfloat16"),
    }
    print(f"ms per batch (median of {args.repeats}), forward + backward; per-caption cost in brackets")
    for label, (images, captions, additive, packed, dtype) in layouts.items():
        fns = parts(images, captions, additive, packed, dtype)
        for fn in fns.values():
            fn()  # trace
        results = {}
        for name, fn in fns.items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            results[name] = statistics.median(times)
        results["input pipeline (Python)"] = input_pipeline(images, captions, args.repeats)
        total = sum(results.values())
        print(f"\n{label}: {total * 1000:.0f} ms for {captions} captions ({captions / total:.0f} captions/s)")
        for name, seconds in results.items():
            print(f"  {name:<28}{seconds * 1000:>8.1f} ms {100 * seconds / total:>5.0f}%  "
                  f"({seconds * 1e6 / captions:.0f} us/caption)")


if __name__ == "__main__":
    main()
