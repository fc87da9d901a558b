"""SASRec+ on MovieLens-100K whose item text tower (MiniLM) is fine-tuned with LoRA adapters.

  python -m recattn_jax.train --config sasrec_ml100k_text --workdir runs/text
  python -m recattn_jax.train --config sasrec_ml100k_text_lora --workdir runs/text_lora \
      --config.train.init_from=runs/text

`sasrec_ml100k_text`'s model, whose output-side item vectors run
all-MiniLM-L6-v2 with rank-8 adapters on query and value of its last 2 blocks
(24,576 trainable parameters in the text tower, 22.6M frozen). A BERT pass per
item is costly, so each step scores 128 sampled positions against their targets
and 128 uniform negatives (`mixed_softmax`, log-Q corrected), running the
tower on those 256 items only; the catalogue is re-embedded before every
evaluation. On a CPU that affords a few percent of a batch's positions per
step, hence the recipe above: train the frozen-text model first, then
fine-tune only the adapters here (`train.init_from` takes every parameter it
has, the adapters start at zero effect, `train.trainable="_lora"`): training
everything with so few positions a step degraded the recommender in
benchmarks/cold_start.py, and adapters alone did not improve on the frozen
text there (docs/results.md). To train from scratch instead, pass
`--config.train.trainable=` (everything trains; far more steps needed). With
an accelerator, raise `train.loss.mixed_softmax.positions` (0: every position).
"""

from recattn_jax.configs import sasrec_ml100k_text


def get_config():
  config = sasrec_ml100k_text.get_config()
  config.model.sasrec.update(item_text_lora_rank=8, item_text_lora_alpha=16.0,
                             item_text_lora_targets=("query", "value"), item_text_lora_layers=2)
  config.train.loss.name = "mixed_softmax"
  config.train.loss.mixed_softmax.update(positions=128, num_negatives=128)
  config.train.learning_rate = 5e-4
  config.train.num_epochs = 6
  config.train.eval_every_epochs = 1
  config.train.patience = 3
  config.train.trainable = "_lora"
  return config
