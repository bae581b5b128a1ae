"""The method, stage by stage: stage 1 (:mod:`.lam`, latent actions from video), stage 2
(:mod:`.bc`, a latent policy), stage 3 (:mod:`.decode`, latent -> true actions, offline or
online) and the baselines each is measured against (:mod:`.baselines`)."""
