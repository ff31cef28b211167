"""How the GPU kernels map work to threads: one warp per output channel.

Every encoded-weight GPU kernel uses the same grid: ``blockIdx.x`` over the
rows of activations, ``blockIdx.y`` over groups of CHANNELS_PER_BLOCK output
channels, ``threadIdx.y`` picks the channel (one warp each) and ``threadIdx.x``
the lane, which strides over that channel's encoding along K. The lanes'
partial sums are then reduced across the warp.
"""

WARP_SIZE = 32
CHANNELS_PER_BLOCK = 4  # warps per thread block: 128 threads

ROWS = "blockIdx.x"  # up to 2^31 - 1 rows
CHANNEL_GROUPS = "blockIdx.y"  # up to 65535 groups: N <= 262140
CHANNEL = "threadIdx.y"
LANE = "threadIdx.x"
