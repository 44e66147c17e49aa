// The subcommand registry and the shared error-to-exit-code path.
#include "tools/commands.h"

#include <algorithm>
#include <map>

#include "core/log.h"
#include "core/tensor.h"

namespace sd3::tools {

namespace {
std::multimap<int, CommandSetup>& setups() {
    static std::multimap<int, CommandSetup> s;
    return s;
}
std::vector<std::pair<CLI::App*, CommandRunner>>& runners() {
    static std::vector<std::pair<CLI::App*, CommandRunner>> r;
    return r;
}
}  // namespace

bool add_command(int order, CommandSetup setup) {
    setups().emplace(order, std::move(setup));
    return true;
}

void register_commands(CLI::App& app) {
    for (auto& [order, setup] : setups()) runners().push_back(setup(app));
}

int run_selected(CLI::App& app) {
    for (auto& [sub, run] : runners()) {
        if (!sub->parsed()) continue;
        Status s;
        try {
            s = run();
        } catch (const OutOfMemoryError& e) {
            // Whatever was being built is unwound; files already written stay as they are.
            s = make_error(ErrorCode::OUT_OF_MEMORY, e.what(),
                           ". Lower what the GPU holds: --train_batch_size or --resolution, --gradient_checkpointing, "
                           "--base-dtype fp8|int8|nf4, --t5-dtype nf4, or --max-vram to stream weights");
        }
        if (s.ok()) return 0;
        log_error(s.message());
        return 1;
    }
    return 2;
}

}  // namespace sd3::tools
