using System.Diagnostics;
using System.Net.Sockets;
using System.Text;

namespace DirBackup.Tests.Infrastructure;

/// <summary>A real dirbackupd process on a private socket; its output is kept for assertions on the log.</summary>
public sealed class DaemonProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();

    private DaemonProcess(Process process, string socketPath)
    {
        _process = process;
        SocketPath = socketPath;
    }

    public string SocketPath { get; }
    public int Pid => _process.Id;
    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;

    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    public static string DaemonDll => Path.Combine(AppContext.BaseDirectory, "dirbackupd.dll");

    /// <summary>Starts <c>dirbackupd serve</c>, optionally behind a launcher such as systemd-socket-activate, and waits until it answers.</summary>
    public static async Task<DaemonProcess> StartAsync(string socketPath, IEnumerable<string>? launcher = null, IEnumerable<string>? options = null)
    {
        var info = new ProcessStartInfo { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        var runtimeDir = Path.Combine(Path.GetDirectoryName(socketPath)!, "qsd");
        var argv = new List<string>(launcher ?? []) { "dotnet", DaemonDll, "serve", "--socket", socketPath, "--runtime-dir", runtimeDir, "--log-level", "debug" };
        argv.AddRange(options ?? []);
        info.FileName = argv[0];
        foreach (var arg in argv.Skip(1))
        {
            info.ArgumentList.Add(arg);
        }
        var process = Process.Start(info)!;
        var daemon = new DaemonProcess(process, socketPath);
        process.OutputDataReceived += (_, e) => daemon.Append(e.Data);
        process.ErrorDataReceived += (_, e) => daemon.Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        await daemon.WaitUntilAnsweringAsync(TimeSpan.FromSeconds(30));
        return daemon;
    }

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }
        lock (_output)
        {
            _output.AppendLine(line);
        }
    }

    private async Task WaitUntilAnsweringAsync(TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        while (DateTime.UtcNow < deadline)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"dirbackupd exited with {_process.ExitCode}: {Output}");
            }
            try
            {
                using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                await probe.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath));
                return;
            }
            catch (SocketException)
            {
                await Task.Delay(25);
            }
        }
        throw new TimeoutException($"dirbackupd did not listen on {SocketPath}: {Output}");
    }

    public async Task WaitForOutputAsync(string text, TimeSpan? limit = null)
    {
        var deadline = DateTime.UtcNow + (limit ?? TimeSpan.FromSeconds(10));
        while (!Output.Contains(text, StringComparison.Ordinal))
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"daemon log lacks '{text}':\n{Output}");
            }
            await Task.Delay(20);
        }
    }

    public async Task<int> TerminateAsync()
    {
        if (!_process.HasExited)
        {
            Process.Start("kill", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!.WaitForExit();
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            await _process.WaitForExitAsync(cts.Token);
        }
        return _process.ExitCode;
    }

    /// <summary>SIGKILL: the daemon dies without cleaning up, as in a crash.</summary>
    public async Task CrashAsync()
    {
        _process.Kill();
        await _process.WaitForExitAsync();
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await TerminateAsync();
        }
        catch (OperationCanceledException)
        {
            _process.Kill(entireProcessTree: true);
        }
        _process.Dispose();
    }
}
