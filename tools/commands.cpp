// The subcommand table and the shared error-to-exit-code path.
#include "tools/commands.h"

#include "core/log.h"

namespace sd3::tools {

namespace {
std::vector<std::pair<CLI::App*, CommandRunner>> g_runners;
}

void register_commands(CLI::App& app) {
    register_info(app, g_runners);
}

int run_selected(CLI::App& app) {
    for (auto& [sub, run] : g_runners) {
        if (!sub->parsed()) continue;
        const Status s = run();
        if (s.ok()) return 0;
        log_error(s.message());
        return 1;
    }
    return 2;
}

}  // namespace sd3::tools
