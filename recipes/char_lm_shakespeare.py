"""Character Transformer LM on tiny Shakespeare (nanoGPT's CPU network, trained
for time: 900 iterations of 16 windows): `--set data=PATH/input.txt`."""

import keras

from kgen import data, metrics, models, networks, trainers

CONFIG = dict(
    data=None,                 # tinyshakespeare/input.txt (or any UTF-8 text file)
    tokenizer="char",          # "char" (vocabulary from the text) or "byte"
    context=64,                # nanoGPT's block_size
    num_layers=4,
    num_heads=4,
    hidden_dim=128,
    dropout=0.0,
    tie_weights=True,
    epochs=9,                  # 9 x 100 iterations (its figures: docs/results.md)
    steps_per_epoch=100,       # (nanoGPT's own: --set epochs=10 steps_per_epoch=200
    batch_size=16,             #  batch_size=12 learning_rate=1e-3 min_learning_rate=1e-4)
    learning_rate=6e-3,        # AdamW, linear warm-up, cosine decay to min_learning_rate
    min_learning_rate=3e-4,
    warmup_steps=100,
    beta_2=0.99,
    weight_decay=0.1,
    clipnorm=1.0,
    steps_per_execution=1,     # training steps per compiled call (fewer Python round trips)
    validation_fraction=0.1,   # first 90% of the characters train, last 10% validate
    validation_batches=50,     # fixed validation windows, the same every epoch
    seed=0,
    sample_count=4,            # text samples logged to TensorBoard every epoch
    sample_prompts=("ROMEO:", "JULIET:"),
    sample_max_new_tokens=200,
    sample_temperature=0.8,
    sample_top_k=20,
)


def build(config):
    if config["data"] is None:
        raise data.DataError("this recipe needs a text file: --set data=PATH/input.txt")
    return build_char_lm(config, data.load_text(config["data"]))


def build_char_lm(config, text):
    if config["steps_per_epoch"] is None:
        raise data.DataError("steps_per_epoch: needed, the training windows are endless")
    ds = data.text_datasets(
        text, config["tokenizer"],
        context=config["context"],
        batch_size=config["batch_size"],
        validation_fraction=config["validation_fraction"],
        validation_batches=config["validation_batches"],
        seed=config["seed"],
    )
    network = networks.transformer_lm(
        ds.tokenizer.vocabulary_size, config["context"],
        num_layers=config["num_layers"], num_heads=config["num_heads"],
        hidden_dim=config["hidden_dim"], dropout=config["dropout"],
        tie_weights=config["tie_weights"],
    )
    model = models.CausalLM(network, ds.tokenizer,
                            default_prompt=config["sample_prompts"][0],
                            seed=config["seed"])
    for i, prompt in enumerate(config["sample_prompts"]):  # refused now, not after an epoch
        model.encode_prompt(prompt, f"sample_prompts[{i}]")
    total = config["epochs"] * config["steps_per_epoch"]
    warmup = min(config["warmup_steps"], total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config["learning_rate"] / max(warmup, 1),
        warmup_target=config["learning_rate"],
        warmup_steps=warmup,
        decay_steps=max(total - warmup, 1),
        alpha=config["min_learning_rate"] / config["learning_rate"],
    )
    optimizer = keras.optimizers.AdamW(
        schedule, beta_2=config["beta_2"], weight_decay=config["weight_decay"],
        global_clipnorm=config["clipnorm"],
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[metrics.BitsPerToken(), metrics.Perplexity()],
        steps_per_execution=config["steps_per_execution"],
    )
    trainers.prefer_xla(model)  # XLA on TensorFlow too: the step is many small ops
    return model, ds


def sample_kwargs(config):
    """What SampleLogger passes to `model.generate(n, seed=...)`: one prompt
    per row, `sample_prompts` in turn."""
    prompts = config["sample_prompts"]
    return dict(
        prompts=[prompts[i % len(prompts)] for i in range(config["sample_count"])],
        max_new_tokens=config["sample_max_new_tokens"],
        sampler="top_k",
        temperature=config["sample_temperature"],
        top_k=config["sample_top_k"],
    )
