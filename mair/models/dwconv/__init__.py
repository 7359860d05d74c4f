"""The VMM's depthwise convolution in channels-last layout: the Triton op (``op``, kernels in ``triton_kernels``)
and the plain reference it is tested against (``reference``)."""

from mair.models.dwconv.op import depthwise_conv2d
from mair.models.dwconv.reference import depthwise_conv2d_reference

__all__ = ["depthwise_conv2d", "depthwise_conv2d_reference"]
