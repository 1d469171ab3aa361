"""The bad-input matrix: every public function, block and config key, each bad input, one clear error.

Each case names what was called, the exception type, and a pattern the message must match: the
function or module and the argument (or config key), and what was expected. Runner cases also check
that nothing is left in the workdir that a later run could mistake for a good one.
"""

import gzip
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pwconv
from experiments import data
from experiments import train
from experiments.configs import smoke
from pwconv import bench
from pwconv import models
from pwconv import ops

X = np.zeros((1, 6, 6, 4), np.float32)
K3 = np.zeros((3, 3, 1, 4), np.float32)


def _init(module, x=X):
  return lambda: module.init(jax.random.key(0), jnp.asarray(x))


def _lazy(make, x=X):
  """Builds the module inside the call, so construction-time errors are caught by the test too."""
  return lambda: make().init(jax.random.key(0), jnp.asarray(x))


LIBRARY_CASES = {
    # ops.pointwise_conv
    "pointwise_conv rank": (lambda: ops.pointwise_conv(jnp.zeros((6, 4)), jnp.zeros((4, 2))),
                            ValueError, r"pointwise_conv: x must have rank 4"),
    "pointwise_conv dtype": (lambda: ops.pointwise_conv(jnp.zeros((1, 2, 2, 4), jnp.int32),
                                                        jnp.zeros((4, 2))),
                             TypeError, r"pointwise_conv: x must have a floating dtype, got int32"),
    "pointwise_conv channels": (lambda: ops.pointwise_conv(jnp.asarray(X), jnp.zeros((5, 2))),
                                ValueError, r"pointwise_conv: kernel must have shape \(4, Cout\)"),
    "pointwise_conv groups divide": (lambda: ops.pointwise_conv(jnp.asarray(X), jnp.zeros((1, 6)),
                                                                groups=3),
                                     ValueError, r"pointwise_conv: groups=3 must divide the input"),
    "pointwise_conv groups zero": (lambda: ops.pointwise_conv(jnp.asarray(X), jnp.zeros((4, 2)),
                                                              groups=0),
                                   ValueError, r"pointwise_conv: groups must be >= 1, got 0"),
    "pointwise_conv kernel dtype": (lambda: ops.pointwise_conv(jnp.asarray(X),
                                                               jnp.zeros((4, 2), jnp.complex64)),
                                    TypeError, r"pointwise_conv: kernel must have a floating dtype"),
    "pointwise_conv no outputs": (lambda: ops.pointwise_conv(jnp.asarray(X), jnp.zeros((4, 0))),
                                  ValueError, r"pointwise_conv: kernel must have at least one output"),
    # ops.depthwise_conv
    "depthwise_conv kernel dtype": (lambda: ops.depthwise_conv(jnp.asarray(X), K3.astype(np.int32)),
                                    TypeError, r"depthwise_conv: kernel must have a floating dtype"),
    "depthwise_conv rank": (lambda: ops.depthwise_conv(jnp.zeros((6, 6, 4)), K3),
                            ValueError, r"depthwise_conv: x must have rank 4"),
    "depthwise_conv dtype": (lambda: ops.depthwise_conv(jnp.zeros((1, 6, 6, 4), jnp.int8), K3),
                             TypeError, r"depthwise_conv: x must have a floating dtype, got int8"),
    "depthwise_conv channels": (lambda: ops.depthwise_conv(jnp.asarray(X), np.zeros((3, 3, 1, 6))),
                                ValueError, r"depthwise_conv: kernel must have shape \(kh, kw, 1, 4"),
    "depthwise_conv strides": (lambda: ops.depthwise_conv(jnp.asarray(X), K3, strides=0),
                               ValueError, r"depthwise_conv: strides must be >= 1, got 0"),
    "depthwise_conv dilation": (lambda: ops.depthwise_conv(jnp.asarray(X), K3, dilation=(1, -1)),
                                ValueError, r"depthwise_conv: dilation must be >= 1, got -1"),
    "depthwise_conv padding string": (lambda: ops.depthwise_conv(jnp.asarray(X), K3, padding="FULL"),
                                      ValueError, r"depthwise_conv: padding must be one of"),
    "depthwise_conv padding negative": (lambda: ops.depthwise_conv(jnp.asarray(X), K3, padding=-2),
                                        ValueError, r"depthwise_conv: padding must be >= 0, got -2"),
    "depthwise_conv impl": (lambda: ops.depthwise_conv(jnp.asarray(X), K3, impl="cudnn"),
                            ValueError, r"depthwise_conv: impl must be one of .*got 'cudnn'"),
    # ops.channel_shuffle
    "channel_shuffle groups": (lambda: ops.channel_shuffle(jnp.asarray(X), 3),
                               ValueError, r"channel_shuffle: groups=3 must divide the channels 4"),
    "channel_shuffle rank": (lambda: ops.channel_shuffle(jnp.zeros((4,)), 2),
                             ValueError, r"channel_shuffle: x must have rank 4"),
    # layers
    "PointwiseConv features": (lambda: pwconv.PointwiseConv(0), ValueError,
                               r"PointwiseConv: features must be >= 1, got 0"),
    "PointwiseConv groups": (_init(pwconv.PointwiseConv(6, groups=3)), ValueError,
                             r"PointwiseConv: groups=3 must divide the input channels 4"),
    "PointwiseConv rank": (_init(pwconv.PointwiseConv(6), np.zeros((6, 4))), ValueError,
                           r"PointwiseConv: x must have rank 4"),
    "DepthwiseConv multiplier": (lambda: pwconv.DepthwiseConv(depth_multiplier=-1), ValueError,
                                 r"DepthwiseConv: depth_multiplier must be >= 1, got -1"),
    "DepthwiseConv kernel_size": (lambda: pwconv.DepthwiseConv(kernel_size=0), ValueError,
                                  r"DepthwiseConv: kernel_size must be >= 1, got 0"),
    "DepthwiseConv impl": (lambda: pwconv.DepthwiseConv(impl="fast"), ValueError,
                           r"DepthwiseConv: impl must be one of"),
    "DepthwiseConv dtype": (_init(pwconv.DepthwiseConv(), np.zeros((1, 4, 4, 2), np.int32)),
                            TypeError, r"DepthwiseConv: x must have a floating dtype"),
    "DepthwiseConv padding": (lambda: pwconv.DepthwiseConv(padding="FULL"), ValueError,
                              r"DepthwiseConv: padding must be one of \['SAME', 'VALID'\]"),
    # blocks
    "Block act string": (lambda: pwconv.DenseConv(8, act="relu"), TypeError,
                         r"DenseConv: act must be a callable \(e.g. jax.nn.relu\) or None"),
    "Block norm string": (lambda: pwconv.Bottleneck(8, 4, norm="batch"), TypeError,
                          r"Bottleneck: norm must be a callable .* or None, got 'batch'"),
    "Block use_bias": (lambda: pwconv.FireModule(2, 4, 4, use_bias="yes"), TypeError,
                       r"FireModule: use_bias must be True, False or None"),
    "SqueezeExcite ratio type": (lambda: pwconv.SqueezeExcite(ratio="a"), TypeError,
                                 r"SqueezeExcite: ratio must be a number, got str 'a'"),
    "SqueezeExcite ratio bool": (lambda: pwconv.SqueezeExcite(ratio=True), TypeError,
                                 r"SqueezeExcite: ratio must be a number, got bool True"),
    "InvertedResidual se_ratio type": (lambda: pwconv.InvertedResidual(8, se_ratio=True), TypeError,
                                       r"InvertedResidual: se_ratio must be a number, got bool"),
    "ShuffleUnit ratio type": (lambda: pwconv.ShuffleUnit(16, bottleneck_ratio="1/4"), TypeError,
                               r"ShuffleUnit: bottleneck_ratio must be a number, got str"),
    "SmallNet reduction type": (lambda: models.SmallNet(block="fire", reduction="half"), TypeError,
                                r"SmallNet: reduction must be a number, got str"),
    "mobilenet_v2 dropout type": (lambda: models.mobilenet_v2(dropout_rate="0.2"), TypeError,
                                  r"MobileNetV2: dropout_rate must be a number, got str"),
    "Bottleneck residual str": (lambda: pwconv.Bottleneck(8, 4, residual="no"), TypeError,
                                r"Bottleneck: residual must be True, False or None, got str 'no'"),
    "Bottleneck expand None": (lambda: pwconv.Bottleneck(8, 4, expand=None), TypeError,
                               r"Bottleneck: expand must be True or False, got NoneType"),
    "DepthwiseSeparable mid_act str": (lambda: pwconv.DepthwiseSeparable(8, mid_act="none"),
                                       TypeError, r"DepthwiseSeparable: mid_act must be True or False"),
    "InvertedResidual residual int": (lambda: pwconv.InvertedResidual(8, residual=0), TypeError,
                                      r"InvertedResidual: residual must be True, False or None"),
    "Inception naive str": (lambda: pwconv.InceptionModule(1, 1, 1, 1, 1, 1, naive="yes"),
                            TypeError, r"InceptionModule: naive must be True or False"),
    "Fire residual str": (lambda: pwconv.FireModule(2, 4, 4, residual="bypass"), TypeError,
                          r"FireModule: residual must be True or False"),
    "Shuffle group_first str": (lambda: pwconv.ShuffleUnit(16, group_first="no"), TypeError,
                                r"ShuffleUnit: group_first must be True or False"),
    "zero_init_last str": (lambda: pwconv.Bottleneck(8, 4, zero_init_last="no"), TypeError,
                           r"Bottleneck: zero_init_last must be True or False"),
    "PointwiseConv use_bias str": (lambda: pwconv.PointwiseConv(8, use_bias="no"), TypeError,
                                   r"PointwiseConv: use_bias must be True or False"),
    "DepthwiseConv use_bias str": (lambda: pwconv.DepthwiseConv(use_bias="no"), TypeError,
                                   r"DepthwiseConv: use_bias must be True or False"),
    "norm instance": (lambda: pwconv.DenseConv(8, norm=nn.BatchNorm()), TypeError,
                      r"DenseConv: norm must be a factory .* not a module instance"),
    "ResNet stage_sizes negative": (lambda: models.ResNet(stage_sizes=(3, -1)), ValueError,
                                    r"ResNet: stage_sizes must be >= 1, got -1"),
    "ResNet stage_sizes str": (lambda: models.ResNet(stage_sizes="34"), TypeError,
                               r"ResNet: stage_sizes must be a non-empty sequence of ints"),
    "ResNet stage_sizes empty": (lambda: models.ResNet(stage_sizes=()), TypeError,
                                 r"ResNet: stage_sizes must be a non-empty sequence of ints"),
    "DenseConv features": (lambda: pwconv.DenseConv(0), ValueError, r"DenseConv: features must be >= 1"),
    "Bottleneck reduced": (lambda: pwconv.Bottleneck(8, 0), ValueError,
                           r"Bottleneck: reduced_features must be >= 1, got 0"),
    "Bottleneck strides": (lambda: pwconv.Bottleneck(8, 2, strides=(2, 0)), ValueError,
                           r"Bottleneck: strides must be >= 1, got 0"),
    "Bottleneck rank": (_init(pwconv.Bottleneck(8, 2), np.zeros((6, 6, 4))), ValueError,
                        r"Bottleneck: x must have rank 4"),
    "DepthwiseSeparable multiplier": (lambda: pwconv.DepthwiseSeparable(8, depth_multiplier=0),
                                      ValueError, r"DepthwiseSeparable: depth_multiplier must be >= 1"),
    "DepthwiseSeparable kernel": (lambda: pwconv.DepthwiseSeparable(8, kernel_size=(3, 3, 3)),
                                  TypeError, r"DepthwiseSeparable: kernel_size must be an int or a "
                                             r"pair"),
    "DepthwiseSeparable dtype": (_init(pwconv.DepthwiseSeparable(8), np.zeros((1, 4, 4, 2), bool)),
                                 TypeError, r"DepthwiseSeparable: x must have a floating dtype"),
    "InvertedResidual expansion": (lambda: pwconv.InvertedResidual(8, expansion=0), ValueError,
                                   r"InvertedResidual: expansion must be >= 1, got 0"),
    "InvertedResidual se_ratio": (lambda: pwconv.InvertedResidual(8, se_ratio=0.0), ValueError,
                                  r"InvertedResidual: se_ratio must be in \(0, 1\]"),
    "InvertedResidual depthwise_conv": (lambda: pwconv.InvertedResidual(8, depthwise_conv="pallas-gpu"),
                                   TypeError, r"InvertedResidual: depthwise_conv must be a callable"),
    "InceptionModule size": (lambda: pwconv.InceptionModule(8, 4, 8, 2, 4, -1), ValueError,
                             r"InceptionModule: pool_proj must be >= 1, got -1"),
    "FireModule size": (lambda: pwconv.FireModule(4, 0, 4), ValueError,
                        r"FireModule: expand1x1 must be >= 1, got 0"),
    "ShuffleUnit groups": (_init(pwconv.ShuffleUnit(12, groups=3)), ValueError,
                           r"ShuffleUnit: groups=3 must divide the input channels 4"),
    "ShuffleUnit strides": (lambda: pwconv.ShuffleUnit(12, strides=(2, 1)), ValueError,
                            r"ShuffleUnit: strides must be \(1, 1\) or \(2, 2\)"),
    "ShuffleUnit downsample width": (_init(pwconv.ShuffleUnit(4, groups=2, strides=(2, 2))),
                                     ValueError, r"ShuffleUnit: with strides \(2, 2\) features must "
                                                 r"exceed the input channels 4"),
    "SqueezeExcite ratio": (lambda: pwconv.SqueezeExcite(ratio=2.0), ValueError,
                            r"SqueezeExcite: ratio must be in \(0, 1\], got 2.0"),
    "SqueezeExcite reduced": (lambda: pwconv.SqueezeExcite(reduced_features=0), ValueError,
                              r"SqueezeExcite: reduced_features must be >= 1"),
    "MLPConv layers": (lambda: pwconv.MLPConv(8, pointwise_layers=-1), ValueError,
                       r"MLPConv: pointwise_layers must be >= 0, got -1"),
    "dense_equivalent in_features": (lambda: pwconv.MLPConv(8).dense_equivalent(0), ValueError,
                                     r"MLPConv: in_features must be >= 1, got 0"),
    # models
    "mobilenet_v1 width": (lambda: models.mobilenet_v1(width_multiplier=0.0), ValueError,
                           r"MobileNetV1: width_multiplier must be > 0"),
    "resnet50 classes": (lambda: models.resnet50(num_classes=0), ValueError,
                         r"ResNet: num_classes must be >= 1, got 0"),
    "SmallNet block": (lambda: models.SmallNet(block="resnet"), ValueError,
                       r"SmallNet: block must be one of .*got 'resnet'"),
    "SmallNet width": (lambda: models.SmallNet(width=0), ValueError,
                       r"SmallNet: width must be >= 1, got 0"),
    "SmallNet depthwise_conv": (lambda: models.SmallNet(depthwise_conv=pwconv.DepthwiseConv()), TypeError,
                           r"SmallNet: depthwise_conv must be a factory .* not a module instance"),
    # costs
    "profile no input": (lambda: pwconv.profile(pwconv.PointwiseConv(4)), ValueError,
                         r"profile: needs at least one example input"),
    "profile not a module": (lambda: pwconv.profile(42, X), TypeError,
                             r"profile: module_or_fn must be a flax.linen or flax.nnx Module"),
    "profile wrong rank": (lambda: pwconv.profile(pwconv.Bottleneck(8, 4), np.zeros((6, 6, 4))),
                           ValueError, r"Bottleneck: x must have rank 4"),
    "savings shape": (lambda: pwconv.savings(pwconv.Bottleneck(8, 4), (6, 6)), ValueError,
                      r"savings: input_shape must be \(N, H, W, C\) or \(H, W, C\)"),
    "savings negative": (lambda: pwconv.savings(pwconv.Bottleneck(8, 4), (1, 6, -6, 4)), ValueError,
                         r"savings: input_shape must be"),
    "savings not a block": (lambda: pwconv.savings(nn.Dense(3), (1, 6, 6, 4)), TypeError,
                            r"savings: block must be a pwconv block with dense_equivalent"),
    # timing and bench
    "time_fn repeats": (lambda: pwconv.timing.time_fn(lambda x: x, X, repeats=0), ValueError,
                        r"time_calls: repeats must be >= 1, got 0"),
    "bench impl": (lambda: bench.run(quick=True, impls=["cuda"]), ValueError,
                   r"bench: --impl must name implementations"),
    "bench cases": (lambda: bench.run(quick=True, cases=["resnet-152"]), ValueError,
                    r"bench: --cases .* matches no case"),
    # data
    "load_dataset name": (lambda: data.load_dataset("imagenet"), ValueError,
                          r"load_dataset: .*name.*imagenet"),
    "load_dataset data_dir": (lambda: data.load_dataset("mnist"), ValueError,
                              r"data_dir.*mnist|mnist.*data_dir"),
    "batch_indices batch": (lambda: data.batch_indices(10, 0, seed=0, step=0), ValueError,
                            r"batch_indices: batch_size"),
}


@pytest.mark.parametrize("case", sorted(LIBRARY_CASES))
def test_library(case):
  call, error, pattern = LIBRARY_CASES[case]
  with pytest.raises(error, match=pattern):
    call()


# ---------------------------------------------------------------------------------------------------
# The runner: bad config keys and values, missing and corrupt data files.


def _write_idx(folder, *, truncate=None):
  images = np.zeros((4, 28, 28), np.uint8)
  labels = np.arange(4, dtype=np.uint8)
  for prefix in ("train", "t10k"):
    payload = struct.pack(">IIII", 0x803, 4, 28, 28) + images.tobytes()
    if truncate and prefix == truncate:
      payload = payload[: len(payload) // 2]
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(payload)
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 4)
                                                         + labels.tobytes())


def _mnist_truncated(tmp_path):
  folder = tmp_path / "mnist"
  folder.mkdir()
  _write_idx(folder, truncate="t10k")
  return {"dataset": "mnist", "data_dir": str(folder)}


def _mnist_corrupt_gzip(tmp_path):
  folder = tmp_path / "mnist_gz"
  folder.mkdir()
  _write_idx(folder)
  path = folder / "train-images-idx3-ubyte"
  packed = gzip.compress(path.read_bytes())
  path.unlink()
  (folder / "train-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 3])
  return {"dataset": "mnist", "data_dir": str(folder)}


def _cifar_missing(tmp_path):
  folder = tmp_path / "empty"
  folder.mkdir()
  return {"dataset": "cifar10", "data_dir": str(folder)}


def _cifar_empty_batch(tmp_path):
  """Binary batches in the release's record format, one of them left empty by a broken copy."""
  folder = tmp_path / "cifar-10-batches-bin"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
               "test_batch"):
    records = np.concatenate([rng.integers(0, 10, (4, 1)), rng.integers(0, 256, (4, 3072))], axis=1)
    (folder / f"{name}.bin").write_bytes(b"" if name == "data_batch_3" else
                                         records.astype(np.uint8).tobytes())
  return {"dataset": "cifar10", "data_dir": str(tmp_path)}


def _cifar_evil_pickle(tmp_path):
  import pickle

  class Evil:
    def __reduce__(self):
      return (exec, ("open('PWNED', 'w').write('x')",))

  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
               "test_batch"):
    (folder / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
  return {"dataset": "cifar10", "data_dir": str(tmp_path)}


RUNNER_CASES = {
    "unknown key": (lambda tmp: {"optimizer.lr": 0.1}, ValueError,
                    r"config.optimizer.lr is not a known key"),
    "unknown variant": (lambda tmp: {"variants": ("dense", "resnet")}, ValueError,
                        r"config.variants: unknown variant 'resnet'"),
    "empty variants": (lambda tmp: {"variants": ()}, ValueError,
                       r"config.variants must be a non-empty list"),
    "duplicate variant": (lambda tmp: {"variants": ("dense", "dense")}, ValueError,
                          r"config.variants lists a variant twice"),
    "baseline": (lambda tmp: {"baseline": "vgg"}, ValueError,
                 r"config.baseline 'vgg' must be one of config.variants"),
    "dataset": (lambda tmp: {"dataset": "imagenet"}, ValueError, r"config.dataset must be one of"),
    "optimizer": (lambda tmp: {"optimizer.name": "lamb"}, ValueError,
                  r"config.optimizer.name must be one of \['sgd', 'adamw'\], got 'lamb'"),
    "dtype": (lambda tmp: {"dtype": "float16"}, ValueError, r"config.dtype must be one of"),
    "norm": (lambda tmp: {"model.norm": "group"}, ValueError, r"config.model.norm must be one of"),
    "act": (lambda tmp: {"model.act": "tanh"}, ValueError, r"config.model.act must be one of"),
    "impl": (lambda tmp: {"model.impl": "cudnn"}, ValueError, r"config.model.impl must be one of"),
    "batch zero": (lambda tmp: {"batch_size": 0}, ValueError, r"config.batch_size must be >= 1, got 0"),
    "batch devices": (lambda tmp: {"batch_size": 12}, ValueError,
                      r"config.batch_size \(12\) must be divisible by the 8 devices"),
    "eval batch devices": (lambda tmp: {"eval_batch_size": 20}, ValueError,
                           r"config.eval_batch_size \(20\) must be divisible by the 8 devices"),
    "batch too big": (lambda tmp: {"batch_size": 1024}, ValueError,
                      r"config.batch_size \(1024\) exceeds the 256 training examples"),
    "num_devices": (lambda tmp: {"num_devices": 64}, ValueError,
                    r"config.num_devices is 64 but only 8 devices exist"),
    "steps": (lambda tmp: {"num_steps": -1}, ValueError, r"config.num_steps must be >= 1, got -1"),
    "learning rate infinite": (lambda tmp: {"optimizer.learning_rate": float("inf")}, ValueError,
                               r"config.optimizer.learning_rate must be a finite number, got inf"),
    "seed beyond 32 bits": (lambda tmp: {"seed": 2**64 - 1}, ValueError,
                            r"config.seed must be in \[0, 4294967295\] \(jax seeds are 32-bit"),
    "learning rate": (lambda tmp: {"optimizer.learning_rate": -0.1}, ValueError,
                      r"config.optimizer.learning_rate must be > 0.0, got -0.1"),
    "weight decay": (lambda tmp: {"optimizer.weight_decay": -1.0}, ValueError,
                     r"config.optimizer.weight_decay must be >= 0.0, got -1.0"),
    "momentum": (lambda tmp: {"optimizer.momentum": 1.0}, ValueError,
                 r"config.optimizer.momentum must be in \[0.0, 1.0\), got 1.0"),
    "reduction": (lambda tmp: {"model.reduction": 0.0}, ValueError,
                  r"config.model.reduction must be in \(0.0, 1.0\], got 0.0"),
    "width": (lambda tmp: {"model.width": 0}, ValueError, r"config.model.width must be >= 1, got 0"),
    "width for inception": (lambda tmp: {"model.width": 4}, ValueError,
                            r"SmallNet: width must be >= 8 for block 'inception'"),
    "synthetic shape": (lambda tmp: {"synthetic.shape": (8, 8)}, ValueError,
                        r"config.synthetic.shape must be \(H, W, C\)"),
    "synthetic sizes": (lambda tmp: {"synthetic.sizes": (0, 64)}, ValueError,
                        r"config.synthetic.sizes must be \(train, test\) of positive ints, got "
                        r"\(0, 64\)"),
    "synthetic sizes length": (lambda tmp: {"synthetic.sizes": (256,)}, ValueError,
                               r"config.synthetic.sizes must be \(train, test\)"),
    "synthetic classes": (lambda tmp: {"synthetic.num_classes": 1}, ValueError,
                          r"config.synthetic.num_classes must be >= 2, got 1"),
    "distributed": (lambda tmp: {"distributed.initialize": "sometimes"}, ValueError,
                    r"config.distributed.initialize must be one of"),
    "distributed never with address": (
        lambda tmp: {"distributed.initialize": "never", "distributed.coordinator_address": "h:1",
                     "distributed.num_processes": 2}, ValueError,
        r"config.distributed.initialize is 'never' but config.distributed.coordinator_address"),
    "distributed processes": (
        lambda tmp: {"distributed.coordinator_address": "h:1", "distributed.num_processes": 0},
        ValueError, r"config.distributed.num_processes must be >= 1, got 0"),
    "distributed process id": (
        lambda tmp: {"distributed.coordinator_address": "h:1", "distributed.num_processes": 2,
                     "distributed.process_id": 2}, ValueError,
        r"config.distributed.process_id must be < config.distributed.num_processes \(2\), got 2"),
    "distributed ids without address": (
        lambda tmp: {"distributed.num_processes": 2, "distributed.process_id": 1}, ValueError,
        r"config.distributed.num_processes and process_id are only used with "
        r"config.distributed.coordinator_address"),
    "data_dir missing": (lambda tmp: {"dataset": "mnist"}, ValueError,
                         r"config.data_dir is required for dataset 'mnist'"),
    "data_dir not there": (lambda tmp: {"dataset": "fashion_mnist",
                                        "data_dir": str(tmp / "nowhere")}, FileNotFoundError,
                           r"nowhere"),
    "IDX truncated": (_mnist_truncated, ValueError, r"t10k-images-idx3-ubyte.*truncated"),
    "IDX gzip corrupt": (_mnist_corrupt_gzip, ValueError, r"train-images-idx3-ubyte.gz"),
    "CIFAR missing": (_cifar_missing, FileNotFoundError, r"data_batch_1"),
    "CIFAR empty batch": (_cifar_empty_batch, ValueError,
                          r"data_batch_3.bin: holds no images; an interrupted copy"),
    "CIFAR pickle that runs code": (_cifar_evil_pickle, ValueError, r"refusing to unpickle"),
}


@pytest.mark.parametrize("case", sorted(RUNNER_CASES))
def test_runner(case, tmp_path, monkeypatch):
  make, error, pattern = RUNNER_CASES[case]
  monkeypatch.chdir(tmp_path)
  config = smoke.get_config()
  for key, value in make(tmp_path).items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  workdir = tmp_path / "workdir"
  with pytest.raises(error, match=pattern):
    train.train_and_evaluate(config, str(workdir))
  # Nothing was written that a later run could mistake for a good one; no code from a file ran.
  assert not workdir.exists() or not any(workdir.iterdir())
  assert not (tmp_path / "PWNED").exists()


def test_runner_refuses_a_url_workdir(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"train_and_evaluate: workdir must be a local or mounted path"):
    train.train_and_evaluate(smoke.get_config(), "gs://bucket/runs/x")
  assert not any(tmp_path.iterdir())
