"""Networks: ADM's layers beyond the original's, EDM's and EDM2's networks, control conditioning, EDM2's encoders."""
