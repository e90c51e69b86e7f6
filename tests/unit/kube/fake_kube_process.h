// Runs tests/lib/fake_kube.py as a child process on loopback and drives it through its
// control endpoint (POST /_control). Header-only; needs libcurl and nlohmann-json.
//
//   FakeKubeProcess kube({"--token", "t"});   // starts it; kube.ok() / kube.error()
//   kube.url();                                // "http://127.0.0.1:PORT"
//   kube.control({{"op", "add_pod"}, {"builder", "deployment_pod"}, {"args", {...}}});
//
// The script is found through $RSTWATCH_SOURCE_DIR, else the RSTWATCH_SOURCE_DIR compile
// definition. The child exits when this object is destroyed (SIGTERM, then SIGKILL), when our
// end of its stdin closes (so a crashed test leaves nothing behind), or when we die (PDEATHSIG).
#pragma once

#include <curl/curl.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace rstwatch::testing {

inline std::string source_dir() {
    if (const char* env = std::getenv("RSTWATCH_SOURCE_DIR"); env && *env) return env;
#ifdef RSTWATCH_SOURCE_DIR
    return RSTWATCH_SOURCE_DIR;
#else
    return ".";
#endif
}

class FakeKubeProcess {
public:
    explicit FakeKubeProcess(std::vector<std::string> args = {}) {
        std::string script = source_dir() + "/tests/lib/fake_kube.py";
        std::vector<std::string> argv = {"/usr/bin/python3", script, "--exit-on-stdin-eof"};
        argv.insert(argv.end(), args.begin(), args.end());
        int in[2], out[2];
        if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
            error_ = "pipe failed";
            return;
        }
        pid_t parent = getpid();
        pid_ = fork();
        if (pid_ == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != parent) _exit(1);
            dup2(in[0], 0);
            dup2(out[1], 1);
            std::vector<char*> cargv;
            for (auto& a : argv) cargv.push_back(a.data());
            cargv.push_back(nullptr);
            execv(cargv[0], cargv.data());
            _exit(127);
        }
        close(in[0]);
        close(out[1]);
        stdin_fd_ = in[1];
        stdout_fd_ = out[0];
        if (pid_ < 0) {
            error_ = "fork failed";
            return;
        }
        // First stdout line: {"port": N, "url": ..., "token": ..., "pid": ...}
        std::string line;
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
        while (line.find('\n') == std::string::npos) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) {
                error_ = "fake_kube.py did not report its port within 15 s";
                return;
            }
            pollfd p{stdout_fd_, POLLIN, 0};
            if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
            char buf[512];
            ssize_t n = read(stdout_fd_, buf, sizeof buf);
            if (n <= 0) {
                error_ = "fake_kube.py exited before reporting its port (" + script + ")";
                return;
            }
            line.append(buf, static_cast<size_t>(n));
        }
        try {
            auto j = nlohmann::json::parse(line.substr(0, line.find('\n')));
            port_ = j.at("port").get<int>();
            url_ = j.at("url").get<std::string>();
        } catch (const std::exception& e) {
            error_ = std::string("bad first line from fake_kube.py: ") + e.what();
        }
    }

    ~FakeKubeProcess() {
        if (stdin_fd_ >= 0) close(stdin_fd_);
        if (stdout_fd_ >= 0) close(stdout_fd_);
        if (pid_ > 0) {
            kill(pid_, SIGTERM);
            for (int i = 0; i < 300; ++i) {
                if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
    }
    FakeKubeProcess(const FakeKubeProcess&) = delete;
    FakeKubeProcess& operator=(const FakeKubeProcess&) = delete;

    bool ok() const { return error_.empty(); }
    const std::string& error() const { return error_; }
    int port() const { return port_; }
    const std::string& url() const { return url_; }
    pid_t pid() const { return pid_; }

    // Runs one control command; returns its "result". Throws std::runtime_error on failure.
    nlohmann::json control(const nlohmann::json& cmd) const {
        std::string body = cmd.dump();
        std::string reply;
        CURL* easy = curl_easy_init();
        if (!easy) throw std::runtime_error("curl_easy_init failed");
        std::string url = url_ + "/_control";
        curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
        curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body.c_str());
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);  // the control channel of a --tls-cert fake
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, +[](char* p, size_t s, size_t n, void* u) {
            static_cast<std::string*>(u)->append(p, s * n);
            return s * n;
        });
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, &reply);
        CURLcode rc = curl_easy_perform(easy);
        curl_slist_free_all(headers);
        curl_easy_cleanup(easy);
        if (rc != CURLE_OK) throw std::runtime_error(std::string("control: ") + curl_easy_strerror(rc));
        auto j = nlohmann::json::parse(reply, nullptr, false);
        if (j.is_discarded() || !j.is_object()) throw std::runtime_error("control: bad reply: " + reply);
        if (!j.value("ok", false)) throw std::runtime_error("control " + cmd.value("op", "?") + ": " + j.value("error", reply));
        return j.contains("result") ? j["result"] : nlohmann::json();
    }

    // Shorthands.
    nlohmann::json add_pod(const std::string& builder, const nlohmann::json& args, bool silent = false) const {
        return control({{"op", "add_pod"}, {"builder", builder}, {"args", args}, {"silent", silent}});
    }
    nlohmann::json add_service(const std::string& builder, const nlohmann::json& args, bool silent = false) const {
        return control({{"op", "add_service"}, {"builder", builder}, {"args", args}, {"silent", silent}});
    }
    nlohmann::json delete_pod(const std::string& ns, const std::string& name, bool silent = false) const {
        return control({{"op", "delete_pod"}, {"namespace", ns}, {"name", name}, {"silent", silent}});
    }
    nlohmann::json state() const { return control({{"op", "state"}}); }

private:
    pid_t pid_ = -1;
    int stdin_fd_ = -1;
    int stdout_fd_ = -1;
    int port_ = 0;
    std::string url_;
    std::string error_;
};

}  // namespace rstwatch::testing
