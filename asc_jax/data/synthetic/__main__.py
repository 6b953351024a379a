from asc_jax.data.synthetic.dataset import main

main()
