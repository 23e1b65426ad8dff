using System.CommandLine;
using System.Runtime.InteropServices;
using DirBackup.Api;
using DirBackup.Backup;
using DirBackup.Errors;
using DirBackup.Logging;
using DirBackup.Protocol;
using DirBackup.Restore;
using DirBackup.Rpc;
using DirBackup.Store;
using Microsoft.Extensions.Logging;

namespace DirBackup;

public static class Program
{
    public static string Version { get; } =
        typeof(Program).Assembly.GetName().Version is { } v ? $"{v.Major}.{v.Minor}.{v.Build}" : "0.0.0";

    public static async Task<int> Main(string[] args)
    {
        var socket = new Option<string>("--socket")
        {
            Description = "Unix socket to listen on (ignored when systemd hands one over)",
            DefaultValueFactory = _ => Environment.GetEnvironmentVariable("DIRBACKUP_SOCKET") ?? ServerSettings.DefaultSocketPath,
        };
        var runtimeDir = new Option<string>("--runtime-dir")
        {
            Description = "directory for private sockets of qemu-storage-daemon children",
            DefaultValueFactory = _ => new BackupSettings().RuntimeDir,
        };
        var logLevel = new Option<string>("--log-level")
        {
            Description = "debug, info, warn or error",
            DefaultValueFactory = _ => "info",
        };
        var restoreReads = new Option<string>("--restore-reads")
        {
            Description = "how restore exports answer reads: splice (the kernel copies once) or copy (through the daemon's memory)",
            DefaultValueFactory = _ => "splice",
            Hidden = true,
        };
        restoreReads.AcceptOnlyFromAmong("splice", "copy");
        var abandonedRestoreCheck = new Option<int>("--abandoned-restore-check")
        {
            Description = "seconds between looks for restores whose task was killed before its cleanup",
            DefaultValueFactory = _ => 30,
            Hidden = true,
        };
        abandonedRestoreCheck.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int>() is < 1 or > 3600)
            {
                r.AddError("--abandoned-restore-check must be between 1 and 3600 seconds");
            }
        });
        var serve = new Command("serve", "Serve the pve-dirbackup storage plugin on a Unix socket") { socket, runtimeDir, logLevel, restoreReads, abandonedRestoreCheck };
        serve.SetAction((result, _) => ServeAsync(result.GetValue(socket)!, result.GetValue(runtimeDir)!, result.GetValue(logLevel)!, result.GetValue(restoreReads) == "splice",
            TimeSpan.FromSeconds(result.GetValue(abandonedRestoreCheck))));

        var version = new Command("version", "Print the daemon and protocol versions");
        version.SetAction(_ => Console.WriteLine($"dirbackupd {Version} (protocol {Catalog.Shared.ProtocolVersion})"));

        var root = new RootCommand("dirbackupd: the daemon behind the pve-dirbackup Proxmox VE backup storage") { serve, version };
        return await root.Parse(args).InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null }).ConfigureAwait(false);
    }

    private static async Task<int> ServeAsync(string socketPath, string runtimeDir, string logLevel, bool spliceRestoreReads, TimeSpan abandonedRestoreCheck)
    {
        using var loggers = SyslogConsole.CreateFactory(SyslogConsole.ParseLevel(logLevel));
        var logger = loggers.CreateLogger("dirbackupd");
        using var stopping = new CancellationTokenSource();
        void Stop(PosixSignalContext context)
        {
            context.Cancel = true;
            RpcLog.Stopping(logger, context.Signal.ToString());
            stopping.Cancel();
        }
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);

        string checkedSocket, checkedRuntimeDir;
        try
        {
            checkedSocket = StorageConfig.CheckPath(socketPath, "--socket");
            checkedRuntimeDir = StorageConfig.CheckPath(runtimeDir, "--runtime-dir");
        }
        catch (DirBackupException e)
        {
            await Console.Error.WriteLineAsync("dirbackupd: " + e.Message).ConfigureAwait(false);
            return 2;
        }
        var storeSettings = new StoreSettings();
        var backupSettings = new BackupSettings { RuntimeDir = checkedRuntimeDir };
        var restores = new RestoreSessions(backupSettings.RuntimeDir, spliceRestoreReads);
        await restores.RemoveLeftoversAsync().ConfigureAwait(false);
        var methods = MethodTable.From(
            new SessionApi(Version, Catalog.Shared.ProtocolVersion),
            new StorageApi(storeSettings),
            new ProviderApi(storeSettings, backupSettings, new BackupSessions(), restores));
        var server = new RpcServer(new ServerSettings { SocketPath = checkedSocket }, methods, Catalog.Shared, loggers);
        var abandonedRestores = restores.EndAbandonedAsync(abandonedRestoreCheck, logger, stopping.Token);
        try
        {
            await server.RunAsync(stopping.Token).ConfigureAwait(false);
            return 0;
        }
        catch (DirBackupException e)
        {
            RpcLog.Stopping(logger, e.Message);
            return 1;
        }
        finally
        {
            await stopping.CancelAsync().ConfigureAwait(false);
            await abandonedRestores.ConfigureAwait(false);
            await restores.StopAllAsync().ConfigureAwait(false);
        }
    }
}
