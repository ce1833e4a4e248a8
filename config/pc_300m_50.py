# PC on the paper's 300M base at 50% compression, for notebooks/walkthrough.ipynb, which reads this
# file: every number is in config/paper_c4.py (this file is that one with --preset=300m --arm=pc
# --compression=0.5; run from the repository root).
preset = '300m'
arm = 'pc'
compression = 0.5
exec(open('config/paper_c4.py').read())
