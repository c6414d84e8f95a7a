## Reference runs of BIOMASS::AGBmonteCarlo on the Nouragues inventory (tests/test_ground.py::BIOMASS_CASE_A).
## Run once with R 4.2.2 and BIOMASS 3.0 (umr-amap/BIOMASS @abd33c2); not part of the test suite (no R in CI).
## out_dir and the vignette's saved taxonomy path are those of the machine it ran on.
suppressMessages({
  .libPaths(c("/work/scratch/biomass/Rlib", .libPaths()))
  library(BIOMASS)
})
options(digits = 12, width = 200)
cat("R:", R.version.string, "| BIOMASS", as.character(packageVersion("BIOMASS")), "| RNGkind:", RNGkind(), "\n\n")
out_dir <- "/work/scratch/biomass"

data("NouraguesTrees"); data("NouraguesHD"); data("param_4")
NT <- NouraguesTrees
cat("NouraguesTrees:", nrow(NT), "trees; per plot:\n"); print(table(NT$Plot))

## ---- H-D models (frequentist lm, log2) ----
HD_unw <- modelHD(D = NouraguesHD$D, H = NouraguesHD$H, method = "log2", useWeight = FALSE, bayesian = FALSE)
HD_w   <- modelHD(D = NouraguesHD$D, H = NouraguesHD$H, method = "log2", useWeight = TRUE,  bayesian = FALSE)
for (nm in c("HD_unw", "HD_w")) {
  m <- get(nm)
  cat(sprintf("%s: coef = %s ; RSElog = %.15g ; RSE = %.15g ; nobs = %d\n", nm,
              paste(sprintf("%.15g", coef(m$model)), collapse = ", "), m$RSElog, m$RSE, length(m$model$residuals)))
}

## ---- Wood density: vignette route (corrected taxonomy shipped with the vignette, GWDD v2 via wsg_estimates) ----
Taxo <- readRDS("/work/scratch/biomass/src/BIOMASS/vignettes/saved_data/Taxo_vignette.rds")
wd <- suppressWarnings(suppressMessages(getWoodDensity(genus = Taxo$genusAccepted, species = Taxo$speciesAccepted,
                                                      stand = NT$Plot)))
NT$WD_gwdd  <- wd$meanWD
NT$sdWD_gwdd <- wd$sdWD
cat("\ngetWoodDensity: levels:\n"); print(table(wd$levelWD))
cat(sprintf("mean WD = %.10g, mean sdWD = %.10g\n", mean(wd$meanWD), mean(wd$sdWD)))

## ---- Heights ----
NT$H_unw <- retrieveH(D = NT$D, model = HD_unw)$H   # includes Baskerville correction exp(0.5*RSElog^2)
NT$H_w   <- retrieveH(D = NT$D, model = HD_w)$H

## export inputs for the Python transcription
full <- function(df) data.frame(lapply(df, function(v) if (is.double(v)) sprintf("%.17g", v) else v))
write.csv(full(data.frame(Plot = NT$Plot, D = NT$D, WD_gwdd = NT$WD_gwdd, sdWD_gwdd = NT$sdWD_gwdd,
                          H_unw = NT$H_unw, H_w = NT$H_w)),
          file.path(out_dir, "nouragues_inputs.csv"), row.names = FALSE, quote = FALSE)
hd <- data.frame(model = c("HD_unw", "HD_w"),
                 a = c(coef(HD_unw$model)[1], coef(HD_w$model)[1]),
                 b = c(coef(HD_unw$model)[2], coef(HD_w$model)[2]),
                 c = c(coef(HD_unw$model)[3], coef(HD_w$model)[3]),
                 RSElog = c(HD_unw$RSElog, HD_w$RSElog))
write.csv(full(hd), file.path(out_dir, "hd_models.csv"), row.names = FALSE, quote = FALSE)

## ---- cases ----
## A   : only allometric-model error. D fixed (Dpropag = NULL), WD = 0.643 fixed (errWD = 0),
##       H = retrieveH(D, unweighted log2 model) fixed (errH = 0).
## A2  : as A but WD = per-tree getWoodDensity meanWD (errWD = 0).
## B   : Dpropag = "chave2004", WD = getWoodDensity meanWD, errWD = sdWD, HDmodel = unweighted log2 modelHD.
## Bvig: as B but HDmodel with useWeight = TRUE (exactly the vignette's 'error_prop' call).
run_case <- function(case, x, n) {
  len <- nrow(x)
  switch(case,
    A    = AGBmonteCarlo(D = x$D, WD = rep(0.643, len), errWD = rep(0, len), H = x$H_unw, errH = 0, Dpropag = NULL, n = n),
    A2   = AGBmonteCarlo(D = x$D, WD = x$WD_gwdd, errWD = rep(0, len), H = x$H_unw, errH = 0, Dpropag = NULL, n = n),
    B    = AGBmonteCarlo(D = x$D, WD = x$WD_gwdd, errWD = x$sdWD_gwdd, HDmodel = HD_unw, Dpropag = "chave2004", n = n),
    Bvig = AGBmonteCarlo(D = x$D, WD = x$WD_gwdd, errWD = x$sdWD_gwdd, HDmodel = HD_w, Dpropag = "chave2004", n = n))
}
det_agb <- function(case, x) {
  switch(case,
    A    = sum(computeAGB(D = x$D, WD = rep(0.643, nrow(x)), H = x$H_unw)),
    A2   = sum(computeAGB(D = x$D, WD = x$WD_gwdd, H = x$H_unw)),
    B    = sum(computeAGB(D = x$D, WD = x$WD_gwdd, H = x$H_unw)),
    Bvig = sum(computeAGB(D = x$D, WD = x$WD_gwdd, H = x$H_w)))
}

subsets <- c(split(NT, NT$Plot), list(all = NT))
rows <- list()
for (case in c("A", "A2", "B", "Bvig")) for (seed in c(10, 1)) for (s in names(subsets)) {
  x <- subsets[[s]]
  agb_det <- det_agb(case, x)
  # n = 1000: one call, set.seed immediately before
  set.seed(seed)
  t0 <- proc.time()[3]
  r <- run_case(case, x, 1000)
  t1 <- proc.time()[3] - t0
  # n = 10000: AGBmonteCarlo refuses n > 1000 (and samples param_4 rows without replacement from 1001),
  # so pool 10 consecutive n=1000 calls after set.seed(seed)
  set.seed(seed)
  pooled <- unlist(lapply(1:10, function(i) colSums(run_case(case, x, 1000)$AGB_simu, na.rm = TRUE)))
  rows[[length(rows) + 1]] <- data.frame(case = case, seed = seed, plot = s, ntrees = nrow(x), sum_computeAGB = agb_det,
    n = 1000, meanAGB = r$meanAGB, medAGB = r$medAGB, sdAGB = r$sdAGB,
    cred2.5 = unname(r$credibilityAGB[1]), cred97.5 = unname(r$credibilityAGB[2]), secs = t1)
  rows[[length(rows) + 1]] <- data.frame(case = case, seed = seed, plot = s, ntrees = nrow(x), sum_computeAGB = agb_det,
    n = 10000, meanAGB = mean(pooled), medAGB = median(pooled), sdAGB = sd(pooled),
    cred2.5 = unname(quantile(pooled, 0.025)), cred97.5 = unname(quantile(pooled, 0.975)), secs = NA)
}
res <- do.call(rbind, rows)
write.csv(full(res), file.path(out_dir, "biomass_results.csv"), row.names = FALSE, quote = FALSE)
cat("\n==== RESULTS (Mg; sum over trees of the subset; n=10000 = 10 pooled n=1000 calls) ====\n")
print(res, row.names = FALSE)

## ---- ratios meanAGB / sum_computeAGB for the n=10000 pooled runs ----
cat("\n==== meanAGB / sum(computeAGB) (n=10000 pooled) ====\n")
p <- res[res$n == 10000, ]
print(data.frame(case = p$case, seed = p$seed, plot = p$plot, ratio = p$meanAGB / p$sum_computeAGB,
                 cv = p$sdAGB / p$meanAGB), row.names = FALSE)

## ---- Vignette's saved (published-in-repo) numbers, for reference ----
e <- readRDS("/work/scratch/biomass/src/BIOMASS/vignettes/saved_data/error_prop.rds")
cat("\nvignettes/saved_data/error_prop.rds (all 2050 trees, vignette Bvig call):\n"); print(e[1:4])
