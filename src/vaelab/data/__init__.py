"""The data: one module per source (mnist: MNIST and Fashion-MNIST; cifar, celeba, folder,
shapes, dsprites), what they share (splits, images: decoding and the cache, downloads), the
classes a data option names (`sources`: `data.source_class`) and the datamodule
(`datamodule.VAEDataModule`). A user's source returns `vaelab.data.DatasetSplits`."""

from vaelab.data.splits import DatasetSplits

__all__ = ["DatasetSplits"]
