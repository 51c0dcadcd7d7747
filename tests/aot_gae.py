"""AOT-compiled variants of the GAE kernels (see aot_compile.py)."""


def variants():
    from fastmarl.kernels.gae import gae_bwd_kernel, gae_block_sizes, gae_fwd_kernel

    fwd_names = ("value_ptr", "next_value_ptr", "reward_ptr", "gamma_ptr", "lmbda_ptr",
                 "advantage_ptr", "value_target_ptr")
    bwd_names = ("grad_advantage_ptr", "grad_value_target_ptr", "gamma_ptr", "lmbda_ptr",
                 "grad_value_ptr", "grad_next_value_ptr", "grad_reward_ptr")
    # (float type, flag type, scalar type, F, tensor discounts): eager launches pass Python
    # floats as fp32, Inductor as fp64.
    cases = [
        ("fp32", "i1", "fp32", 3, False),
        ("fp32", "u8", "fp64", 8, True),
        ("fp16", "i1", "fp32", 70, False),
        ("bf16", "i1", "fp64", 1, False),
        ("fp64", "i1", "fp32", 4, True),
    ]
    for float_t, flag_t, scalar_t, features, tensors in cases:
        block_t, block_f = gae_block_sizes(features)
        constexprs = dict(BT=block_t, BF=block_f, HAS_GAMMA_TENSOR=tensors,
                          HAS_LMBDA_TENSOR=tensors, ACC_FP64=float_t == "fp64")
        scalars = {"gamma": scalar_t, "lmbda": scalar_t}
        flags = {"done_ptr": f"*{flag_t}", "terminated_ptr": f"*{flag_t}"}
        yield (f"gae_fwd {float_t}/{flag_t}/{scalar_t} F={features} tensors={tensors}", gae_fwd_kernel,
               {**{n: f"*{float_t}" for n in fwd_names}, **flags}, scalars, constexprs)
        yield (f"gae_bwd {float_t}/{flag_t}/{scalar_t} F={features} tensors={tensors}", gae_bwd_kernel,
               {**{n: f"*{float_t}" for n in bwd_names}, **flags}, scalars, constexprs)
