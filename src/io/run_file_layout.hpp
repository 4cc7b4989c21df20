// run_file_layout.hpp: the names of the run file's groups, datasets and fixed
// attributes (doc/output-format.md), in one place for its writer (RunFile)
// and its readers (fulcrum-inspect, fulcrum-fit, the sweep tools, tests).
// No HDF5 here: a reader includes this to know where things are.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace fulcrum {

inline constexpr const char* kRunFileFormat = "fulcrum-run";
inline constexpr std::int64_t kRunFileFormatVersion = 1;

namespace run_layout {

// Root attributes the writer sets itself or every reader relies on.
inline constexpr const char* kFormatAttr = "format";
inline constexpr const char* kFormatVersionAttr = "format_version";
inline constexpr const char* kStatusAttr = "status";
inline constexpr const char* kDeckAttr = "deck";
inline constexpr const char* kSeedAttr = "seed";

// Groups. /config, /timers and /summary hold attributes only; /train, /eval
// and /routing hold datasets of one row per record.
inline constexpr const char* kRoot = "/";
inline constexpr const char* kConfig = "/config";
inline constexpr const char* kTrain = "/train";
inline constexpr const char* kEval = "/eval";
inline constexpr const char* kTimers = "/timers";
inline constexpr const char* kSummary = "/summary";
inline constexpr const char* kRouting = "/routing";
// Groups every run file has from its creation.
inline constexpr std::array<const char*, 5> kCreatedGroups = {kConfig, kTrain, kEval, kTimers, kSummary};

// /train and /eval columns: appendable 1-D datasets, int64 then float64.
inline constexpr const char* kStepColumn = "step";  // every row-per-record group has it
inline constexpr const char* kTokensColumn = "tokens";
inline constexpr const char* kFlopsColumn = "flops";
inline constexpr const char* kLossColumn = "loss";
inline constexpr const char* kLmLossColumn = "lm_loss";
inline constexpr const char* kAuxLossColumn = "aux_loss";
inline constexpr const char* kZLossColumn = "z_loss";
inline constexpr const char* kLrColumn = "lr";
inline constexpr const char* kGradNormColumn = "grad_norm";
inline constexpr const char* kTokensPerSecondColumn = "tokens_per_second";
inline constexpr const char* kValLossColumn = "val_loss";
inline constexpr std::array<const char*, 2> kTrainIntColumns = {kStepColumn, kTokensColumn};
inline constexpr std::array<const char*, 8> kTrainRealColumns = {
    kFlopsColumn, kLossColumn, kLmLossColumn, kAuxLossColumn, kZLossColumn, kLrColumn, kGradNormColumn,
    kTokensPerSecondColumn};
inline constexpr std::array<const char*, 2> kEvalIntColumns = {kStepColumn, kTokensColumn};
inline constexpr std::array<const char*, 2> kEvalRealColumns = {kFlopsColumn, kValLossColumn};
inline constexpr std::uint64_t kColumnChunkRows = 1024;

// /routing (MoE runs): one row per snapshot.
inline constexpr std::array<const char*, 2> kRoutingIntColumns = {kStepColumn, kTokensColumn};
inline constexpr const char* kExpertShare = "expert_share";            // (S, L, E)
inline constexpr const char* kMaxViolation = "max_violation";          // (S, L)
inline constexpr const char* kRouterEntropy = "router_entropy";        // (S, L)
inline constexpr const char* kDroppedFraction = "dropped_fraction";    // (S, L)
inline constexpr std::array<const char*, 3> kRoutingLayerColumns = {kMaxViolation, kRouterEntropy,
                                                                    kDroppedFraction};
inline constexpr const char* kTokensPerExpert = "tokens_per_expert";   // (S, L, E), optional
inline constexpr const char* kMinLoad = "min_load";                    // (S, L), optional
inline constexpr const char* kTopkMargin = "topk_margin";              // (S, L), optional
inline constexpr const char* kRouterBias = "router_bias";              // (S, L, E), optional
inline constexpr const char* kLayerIndex = "layer_index";              // (L), int32, fixed
inline constexpr const char* kMoeLayersAttr = "n_moe_layers";
inline constexpr const char* kExpertsAttr = "n_experts";
inline constexpr std::uint64_t kRoutingChunkRows = 64;

// Timer attributes in /timers: "<name>.seconds" and "<name>.calls".
inline constexpr const char* kTimerSecondsSuffix = ".seconds";
inline constexpr const char* kTimerCallsSuffix = ".calls";

// "<group>/<name>", the path of a dataset in one of the groups above.
inline std::string in_group(const char* group, const char* name) { return std::string(group) + "/" + name; }

}  // namespace run_layout
}  // namespace fulcrum
