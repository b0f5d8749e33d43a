"""What a trained model is judged by: accuracy under noise and attacks (FGSM, PGD from us; Square
and APGD from torchattacks) and the forum thread's side-by-side comparison. Imports only torch,
models and the library."""
