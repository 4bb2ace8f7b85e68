"""The mechanics DemP is made of, each independent of the trainer: the regularizers added to the loss
(:mod:`.regularizers`), the λ/σ schedules (:mod:`.schedules`), the asymmetric noise on live neurons
(:mod:`.noise`) and the optimizer-state surgery that keeps an optimizer working across a structural
removal (:mod:`.optim_surgery`)."""
