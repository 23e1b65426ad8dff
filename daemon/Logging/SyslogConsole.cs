using Microsoft.Extensions.Logging;
using Serilog;
using Serilog.Core;
using Serilog.Events;

namespace DirBackup.Logging;

/// <summary>
/// Serilog to standard output, one line per event, each prefixed with its syslog priority (&lt;6&gt;...) so that
/// journald keeps the level when systemd runs the daemon.
/// </summary>
public static class SyslogConsole
{
    public static ILoggerFactory CreateFactory(LogEventLevel minimum)
    {
        var serilog = new LoggerConfiguration()
            .MinimumLevel.Is(minimum)
            .Enrich.With<SyslogPriorityEnricher>()
            .WriteTo.Console(outputTemplate: "<{SyslogPriority}>{SourceContext:l}: {Message:lj}{NewLine}", standardErrorFromLevel: null)
            .CreateLogger();
        return LoggerFactory.Create(builder => builder.AddSerilog(serilog, dispose: true).SetMinimumLevel(LogLevel.Trace));
    }

    public static LogEventLevel ParseLevel(string text) => text.ToLowerInvariant() switch
    {
        "debug" => LogEventLevel.Debug,
        "info" => LogEventLevel.Information,
        "warn" or "warning" => LogEventLevel.Warning,
        "error" or "err" => LogEventLevel.Error,
        _ => throw new ArgumentException($"unknown log level '{text}' (debug, info, warn, error)"),
    };

    private sealed class SyslogPriorityEnricher : ILogEventEnricher
    {
        public void Enrich(LogEvent logEvent, ILogEventPropertyFactory propertyFactory)
        {
            int priority = logEvent.Level switch
            {
                LogEventLevel.Verbose or LogEventLevel.Debug => 7,
                LogEventLevel.Information => 6,
                LogEventLevel.Warning => 4,
                LogEventLevel.Error => 3,
                _ => 2,
            };
            logEvent.AddPropertyIfAbsent(propertyFactory.CreateProperty("SyslogPriority", priority));
        }
    }
}
