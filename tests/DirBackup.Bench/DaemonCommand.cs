using System.Diagnostics;

namespace DirBackup.Bench;

/// <summary>
/// How the benchmarks start dirbackupd: the precompiled self-contained build the package ships (the Bench target
/// publishes one), or, when run without it, the project's own build through <c>dotnet exec</c>.
/// </summary>
public sealed record DaemonCommand(string FileName, string[] Prefix, string Description)
{
    public static DaemonCommand Published(string executable) => new(executable, [], $"{executable} (ReadyToRun, as packaged)");

    public static DaemonCommand Built(string dll) => new("dotnet", ["exec", dll], $"dotnet exec {dll} (JIT-compiled: start-up is slower than packaged)");

    public ProcessStartInfo Serve(string socket, string? runtimeDir)
    {
        var start = new ProcessStartInfo(FileName);
        foreach (var arg in Prefix)
        {
            start.ArgumentList.Add(arg);
        }
        foreach (var arg in (string[])["serve", "--socket", socket, "--log-level", "warn"])
        {
            start.ArgumentList.Add(arg);
        }
        if (runtimeDir is not null)
        {
            start.ArgumentList.Add("--runtime-dir");
            start.ArgumentList.Add(runtimeDir);
        }
        return start;
    }
}
