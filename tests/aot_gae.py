"""AOT-compiled variants of the GAE kernels (see aot_compile.py)."""


def variants():
    from fastmarl.kernels.gae import gae_block_f, gae_bwd_kernel, gae_fwd_kernel
    from fastmarl.ops.tuning import candidates

    fwd_names = ("value_ptr", "next_value_ptr", "reward_ptr", "gamma_ptr", "lmbda_ptr",
                 "advantage_ptr", "value_target_ptr")
    bwd_names = ("grad_advantage_ptr", "grad_value_target_ptr", "gamma_ptr", "lmbda_ptr",
                 "grad_value_ptr", "grad_next_value_ptr", "grad_reward_ptr")
    # (float type, flag type, scalar type, F, tensor discounts, config): eager launches pass
    # Python floats as fp32, Inductor as fp64. The config is the default launch configuration
    # (index 0) or the sweep's candidate of longest tile and most warps (index -1), so that
    # every tile length the tuning table may pick is known to compile.
    cases = [
        ("fp32", "i1", "fp32", 3, False, 0),
        ("fp32", "u8", "fp64", 8, True, 0),
        ("fp16", "i1", "fp32", 70, False, 0),
        ("bf16", "i1", "fp64", 1, False, -1),
        ("fp64", "i1", "fp32", 4, True, -1),
    ]
    for float_t, flag_t, scalar_t, features, tensors, which in cases:
        block_f = gae_block_f(features)
        config = candidates("gae_fwd", bf=block_f)[which]
        constexprs = dict(BT=config["BT"], BF=block_f, HAS_GAMMA_TENSOR=tensors,
                          HAS_LMBDA_TENSOR=tensors, ACC_FP64=float_t == "fp64")
        scalars = {"gamma": scalar_t, "lmbda": scalar_t}
        flags = {"done_ptr": f"*{flag_t}", "terminated_ptr": f"*{flag_t}"}
        name = f"{float_t}/{flag_t}/{scalar_t} F={features} tensors={tensors} BT={config['BT']}"
        yield (f"gae_fwd {name}", gae_fwd_kernel,
               {**{n: f"*{float_t}" for n in fwd_names}, **flags}, scalars, constexprs)
        yield (f"gae_bwd {name}", gae_bwd_kernel,
               {**{n: f"*{float_t}" for n in bwd_names}, **flags}, scalars, constexprs)
