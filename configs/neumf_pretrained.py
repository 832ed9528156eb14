"""NeuMF initialised from pretrained GMF and MLP runs, fine-tuned with plain SGD.

  python -m ncf_jax.main --config=configs/neumf_pretrained.py \
      --config.gmf_workdir=/tmp/gmf --config.mlp_workdir=/tmp/mlp --workdir=/tmp/neumf_pre

The GMF and MLP runs must use the same dataset, num_factors and layers as this
one (checked when merging). `python -m ncf_jax.pipeline` runs all three.

Optimizer: the paper fine-tunes the merged model with vanilla SGD, because the
pretraining runs' Adam moments are not saved (they are here, but GMF's and
MLP's moments describe other losses, so they would not be the right
statistics either). With the loss averaged over a batch of 256, one embedding
row gets only a few of the batch's gradients, so SGD needs a large step to move
the tables at all, but a large one overfits quickly. Measured on synthetic
data (500 items; GMF and MLP pretrained 10 epochs with Adam 1e-3, best epochs
merged with alpha 0.5), test HR@10 of the merged model (epoch 0) and after
fine-tuning epochs 1..5 at batch 256:

  1000 users, seed 0:  merged 0.773
    sgd 0.01   0.778 0.776 0.783 0.784 0.784
    sgd 0.1    0.781 0.786 0.781 0.783 0.775
    sgd 0.5    0.769 0.777 0.780 0.773 0.765
    sgd 1.0    0.756 0.782 0.768 0.770 0.759
    adam 1e-4  0.783 0.786 0.789 0.785 0.786
  1000 users, seed 1:  merged 0.761
    sgd 0.003  0.765 0.767 0.767 0.767 0.769
    sgd 0.01   0.770 0.770 0.774 0.772 0.773
    sgd 0.03   0.774 0.770 0.771 0.772 0.772
    sgd 0.1    0.773 0.764 0.764 0.763 0.766
  4000 users, seed 0:  merged 0.776 (GMF best 0.767, MLP best 0.770)
    sgd 0.01   0.775 0.775 0.775 0.774 0.773
    sgd 0.03   0.774 0.774 0.772 0.771 0.768
    sgd 0.1    0.773 0.770 0.768 0.766 0.765
    sgd 0.3    0.772 0.766 0.763 0.759 0.757
    adam 1e-4  0.773 0.769 0.765 0.764 0.761

SGD 0.01 gains about one point on the small sets and holds the merged model's
level (within noise, ~0.007 at 4000 users) where the merged model already
beats both pretrained runs, while the training loss keeps falling; larger
rates lose what the merge gained. (The synthetic data's ceiling is low, so
this sets a safe default rather than a tuned one: on real data, sweep it.)
"""

from ml_collections import config_dict

from ncf_jax.configs import neumf


def get_config():
  config = neumf.get_config()
  config.gmf_workdir = config_dict.placeholder(str)  # a finished `configs/gmf.py` run
  config.mlp_workdir = config_dict.placeholder(str)  # a finished `configs/mlp.py` run
  config.alpha = 0.5  # head weight of the GMF part; 1 - alpha for the MLP part
  config.optimizer = 'sgd'
  config.learning_rate = 0.01
  return config
