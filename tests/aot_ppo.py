"""AOT-compiled variants of the PPO kernels (see aot_compile.py)."""


def variants():
    from fastmarl.kernels import ppo as K
    from fastmarl.ops.tuning import candidates

    f32 = "*fp32"
    sizes = {"N": "i32", "M": "i32", "G": "i32", "n_parts": "i32", "eps": "fp32"}
    inputs = ("log_prob_ptr", "prev_log_prob_ptr", "advantage_ptr")
    column_partials = ("p_count_ptr", "p_mean_ptr", "p_m2_ptr", "p_lw_max_ptr", "p_s1_ptr", "p_s2_ptr")
    # (float type, M, config): the default launch configuration (index 0) or the sweep's
    # candidate of largest tile and most warps (index -1).
    for float_t, M, which in (("fp32", 3, 0), ("bf16", 8, -1), ("fp16", 256, 0)):
        block_m = K.ppo_block_m(M)
        config = candidates("ppo_clip", bm=block_m)[which]
        block_n = config["BN"]
        ptr = f"*{float_t}"
        tag = f"{float_t} M={M} BN={block_n}"
        for normalize in (False, True):
            stats_ptrs = {n: ptr for n in inputs}
            stats_ptrs.update({n: f32 for n in column_partials + ("p_kl_ptr", "p_ratio_sum_ptr", "p_ratio_max_ptr",
                                                                 "adv_mean_ptr", "adv_std_ptr")})
            stats_ptrs.update({n: ptr for n in ("kl_ptr", "ess_ptr", "max_ratio_ptr", "mean_ratio_ptr")})
            stats_ptrs["ticket_ptr"] = "*i32"
            yield (f"ppo_clip_stats {tag} normalize={normalize}", K.ppo_clip_stats_kernel, stats_ptrs, sizes,
                   dict(BN=block_n, BM=block_m, BG=block_m, BLOCK_P=K.BLOCK_P, NORMALIZE=normalize))
        for reduction in (K.REDUCE_MEAN.value, K.REDUCE_NONE.value):
            loss_ptrs = {n: ptr for n in inputs + ("loss_ptr", "clip_fraction_ptr")}
            loss_ptrs.update({n: f32 for n in ("clip_low_ptr", "clip_high_ptr", "adv_mean_ptr", "adv_std_ptr",
                                               "p_loss_ptr", "p_clip_ptr")})
            loss_ptrs["ticket_ptr"] = "*i32"
            yield (f"ppo_clip_loss {tag} reduction={reduction}", K.ppo_clip_loss_kernel, loss_ptrs, sizes,
                   dict(BN=block_n, BM=block_m, BLOCK_P=K.BLOCK_P, REDUCTION=reduction))
        for reduction in (K.REDUCE_SUM.value, K.REDUCE_NONE.value):
            bwd_ptrs = {n: ptr for n in ("grad_loss_ptr", *inputs, "grad_log_prob_ptr")}
            bwd_ptrs.update({n: f32 for n in ("clip_low_ptr", "clip_high_ptr", "adv_mean_ptr", "adv_std_ptr")})
            yield (f"ppo_clip_bwd {tag} reduction={reduction}", K.ppo_clip_bwd_kernel, bwd_ptrs, sizes,
                   dict(BN=block_n, BM=block_m, REDUCTION=reduction))
        for loss in (K.LOSS_L1.value, K.LOSS_L2.value, K.LOSS_SMOOTH_L1.value):
            flags = dict(HAS_CLIP=loss != K.LOSS_L1.value, HAS_COEFF=loss != K.LOSS_L2.value)
            # l1 without reduction or explained variance; the others reduce and finalise it
            reduction = K.REDUCE_NONE.value if loss == K.LOSS_L1.value else K.REDUCE_MEAN.value
            critic_ptrs = {n: ptr for n in ("value_ptr", "target_ptr", "old_value_ptr", "loss_ptr",
                                            "clip_fraction_ptr", "explained_variance_ptr")}
            critic_ptrs.update({n: f32 for n in ("clip_value_ptr", "coeff_ptr", "p_loss_ptr", "p_clip_ptr",
                                                 "p_t_count_ptr", "p_t_mean_ptr", "p_t_m2_ptr", "p_r_mean_ptr",
                                                 "p_r_m2_ptr")})
            critic_ptrs["ticket_ptr"] = "*i32"
            yield (f"ppo_critic {tag} loss={loss}", K.ppo_critic_kernel, critic_ptrs, sizes,
                   dict(BN=block_n, BM=block_m, BLOCK_P=K.BLOCK_P, LOSS=loss, REDUCTION=reduction,
                        EXPLAINED_VARIANCE=loss != K.LOSS_L1.value, **flags))
            bwd = {n: ptr for n in ("grad_loss_ptr", "value_ptr", "target_ptr", "old_value_ptr", "grad_value_ptr")}
            bwd.update({"clip_value_ptr": f32, "coeff_ptr": f32})
            yield (f"ppo_critic_bwd {tag} loss={loss}", K.ppo_critic_bwd_kernel, bwd, sizes,
                   dict(BN=block_n, BM=block_m, LOSS=loss, REDUCTION=K.REDUCE_NONE.value, **flags))
