"""`kgen serve` will live here: TF Serving REST (KServe V1), KServe V2 and a client."""
