"""forestcarbon: sky–air–ground forest carbon mapping.

Satellite mosaics (``forestcarbon.rs``), airborne LiDAR metrics
(``forestcarbon.rs.lidar``), plot allometry and fitted biomass regressors
(``forestcarbon.models``), parcel and project carbon
(``forestcarbon.vector``), wired together by Prefect flows
(``forestcarbon.flows``).
"""

__version__ = "0.1.0"
